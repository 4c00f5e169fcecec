"""What one rank of a supervised job (SFT, RM) does, from a validated config to a summary.

The same function runs in-process (one rank) or inside each Ray actor of a trainer group.
Order matters for the user: tokenizer and data are read and checked before any model loads.
"""

from __future__ import annotations

import os
from typing import Optional


def run_supervised(trainer_cls, cfg, rank: int = 0, world_size: int = 1, master_addr: str = "127.0.0.1",
                   master_port: Optional[int] = None, resume_from: Optional[str] = None, store=None) -> dict:
    """`store`: the torch.distributed Store the ranks meet through (a Ray rendezvous; one rank needs none)."""
    from coati_ray.models.loading import check_vocab, tokenizer_for
    from coati_ray.strategies import make_strategy

    tc = cfg.trainer
    per_rank = tc.batch_size // world_size
    # packed (trainer.micro_batch_tokens): as many micro-batches as the budget cuts, at most one per item
    accum = per_rank if tc.micro_batch_tokens is not None else per_rank // tc.micro_batch_size
    strategy = make_strategy(cfg.strategy, rank, world_size, master_addr, master_port, grad_accum_steps=accum,
                             store=store)
    strategy.setup_distributed()
    try:
        d = cfg.data
        tokenizer = tokenizer_for(cfg.model, d)
        train, report = trainer_cls.build_dataset(d.train_path, tokenizer, d, d.max_samples)
        evaluation = trainer_cls.build_dataset(d.eval_path, tokenizer, d, None, "eval")[0] if d.eval_path else None
        from coati_ray.storage import readable_path

        model = trainer_cls.build_model(cfg.model, os.path.join(readable_path(resume_from, "--resume"), "model")
                                        if resume_from else None)
        check_vocab(tokenizer, model, cfg.model.local_path)
        trainer = trainer_cls(cfg, strategy, model, tokenizer, train, evaluation, trainer_cls.collator(tokenizer),
                              cfg.output_dir, resume_from=resume_from)
        trainer.logger.info(f"data: {report.rows} usable rows from {report.path}; {report.skipped_bad} bad rows "
                            f"skipped, {report.truncated} truncated, {report.dropped_empty} dropped (reply cut off)")
        try:
            return trainer.fit(extra={"data": vars(report)})
        finally:
            trainer.logger.discard()  # a remote run directory: the metrics up to a failure uploaded too
    finally:
        strategy.close()
