"""The update loop shared by SFT and RM: global batch -> this rank's shard -> micro-batches.

A global batch of `trainer.batch_size` items is cut into `num_ranks` equal shards and each shard
into micro-batches of `micro_batch_size`; gradients are accumulated over a rank's micro-batches
(each loss divided by their count) and averaged across ranks by the strategy. The same global
batch therefore gives the same update on 1 rank or N (up to float rounding).

With `trainer.micro_batch_tokens` a shard is cut by tokens instead (coati_ray/models/packing.py: each
micro-batch one packed row, no padding), into as many micro-batches on every rank, and each micro-batch's
loss is weighted by its share of the shard's loss units (SFT: labelled tokens; RM: pairs): the shard's
loss is the same whatever the cut, equal to one padded micro-batch of the whole shard.

The trainer is driven the same way in one process or inside a Ray actor: build it with a Strategy
that already joined its process group, call `fit()`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable, Optional

import torch

from coati_ray.config import to_dict
from coati_ray.utils.redact import redact_config
from coati_ray.models.factory import export_model
from coati_ray.trainers.schedule import make_optimizer, make_scheduler
from coati_ray.storage import readable_path
from coati_ray.storage.checkpoint import Checkpoint, written_whole
from coati_ray.storage.staging import staged_writes
from coati_ray.storage.uri import join
from coati_ray.utils.run_dir import COMPLETE_MARKER, RunLogger, checkpoint_dir, prune_checkpoints


class SupervisedTrainer:
    stage = "train"

    def __init__(self, cfg, strategy, model, tokenizer, train_items: list, eval_items: Optional[list],
                 collate: Callable[[list], dict], run_dir: str, resume_from: Optional[str] = None):
        self.cfg, self.strategy, self.tokenizer = cfg, strategy, tokenizer
        self.train_items, self.eval_items, self.collate = train_items, eval_items, collate
        self.run_dir = run_dir
        tc = cfg.trainer
        self.world = strategy.world_size
        self.packing = tc.micro_batch_tokens is not None
        model.pack_sequences = self.packing  # before a wrapper hides the attribute
        self.per_rank = tc.batch_size // self.world
        self.accum = self.per_rank // tc.micro_batch_size
        self.steps_per_epoch = len(train_items) // tc.batch_size
        if self.steps_per_epoch == 0:
            from coati_ray.errors import DataError

            raise DataError(f"data error: {cfg.data.train_path} has {len(train_items)} usable rows, fewer than one "
                            f"global batch (trainer.batch_size={tc.batch_size}); lower the batch size or add data")
        self.total_steps = self.steps_per_epoch * tc.max_epochs
        if tc.max_steps is not None:
            self.total_steps = min(self.total_steps, tc.max_steps)
        params = [p for p in model.parameters() if p.requires_grad]
        oc = cfg.optim
        optimizer = make_optimizer(params, oc, strategy.name)
        scheduler = make_scheduler(optimizer, self.total_steps, oc.warmup_steps, oc.scheduler, oc.min_lr_ratio)
        self.model, self.optimizer, self.scheduler = strategy.prepare(model, optimizer, scheduler)
        self.step = 0
        self.logger = RunLogger(run_dir, enabled=strategy.is_rank0, stage=self.stage, log_every=tc.log_every,
                                wandb=cfg.logging.wandb, config=redact_config(to_dict(cfg)))
        if resume_from is not None:
            self._load_state(resume_from)

    # ------------------------------------------------------------------ to implement per stage

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """Loss of one micro-batch (already on the device) and scalar stats to average."""
        raise NotImplementedError

    def eval_batch(self, batch: dict) -> dict:
        """Sums over one evaluation micro-batch: {name: (sum, count)}."""
        raise NotImplementedError

    def count_tokens(self, batch: dict) -> int:
        return int(sum(v.sum() for k, v in batch.items() if k.endswith("mask")))

    def item_tokens(self, item: dict) -> int:
        """Tokens one item puts into a pack (what `trainer.micro_batch_tokens` counts)."""
        return len(item["input_ids"])

    def loss_units(self, batch: dict) -> float:
        """What `compute_loss` averages over in this micro-batch (SFT: labelled tokens; RM: pairs)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ loop

    def batch_indices(self, epoch: int) -> list[list[int]]:
        """Global batches of this epoch: the same permutation on every rank (seeded by epoch)."""
        g = torch.Generator().manual_seed(self.cfg.strategy.seed + epoch)
        order = torch.randperm(len(self.train_items), generator=g).tolist()
        bs = self.cfg.trainer.batch_size
        return [order[i * bs:(i + 1) * bs] for i in range(self.steps_per_epoch)]

    def rank_micro_batches(self, global_batch: list[int]) -> list[dict]:
        """This rank's share of a global batch, collated: micro_batch_size items each, or with
        `trainer.micro_batch_tokens` at most that many tokens each, as many on every rank."""
        mine = global_batch[self.strategy.rank * self.per_rank:(self.strategy.rank + 1) * self.per_rank]
        tc = self.cfg.trainer
        if not self.packing:
            mb = tc.micro_batch_size
            return [self.collate([self.train_items[i] for i in mine[j:j + mb]]) for j in range(0, len(mine), mb)]
        from coati_ray.models.packing import split_to, token_budget_chunks

        tokens = [self.item_tokens(self.train_items[i]) for i in mine]
        chunks = token_budget_chunks(tokens, tc.micro_batch_tokens)
        if self.world > 1:  # every rank runs as many micro-batches (one gradient all-reduce, wherever it falls)
            chunks = split_to(chunks, tokens, int(self.strategy.all_reduce_max([float(len(chunks))])[0]))
        return [self.collate([self.train_items[mine[x]] for x in chunk]) for chunk in chunks]

    def micro_weights(self, micro_batches: list[dict]) -> list[float]:
        """Each micro-batch's loss weight in its rank's gradient: 1 / count, or packed, its share of the
        rank's loss units (so the shard's loss does not depend on where the token budget cut it)."""
        if not self.packing:
            return [1.0 / len(micro_batches)] * len(micro_batches)
        units = [float(self.loss_units(micro)) for micro in micro_batches]
        total = sum(units)
        return [u / total for u in units] if total > 0 else [1.0 / len(units)] * len(units)

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.strategy.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def train_step(self, micro_batches: list[dict]) -> dict:
        """One optimiser step over this rank's micro-batches; returns metrics averaged over all ranks."""
        self.model.train()
        t0 = time.time()
        sums: dict[str, float] = {}
        tokens = 0
        weights = self.micro_weights(micro_batches)
        for j, micro in enumerate(micro_batches):
            micro = self._to_device(micro)
            with self.strategy.accumulate(self.model, self.optimizer, last_micro_batch=j == len(micro_batches) - 1):
                loss, stats = self.compute_loss(micro)
                scaled = loss * weights[j] if self.packing else loss / len(micro_batches)
                self.strategy.backward(scaled, self.optimizer)
            for k, v in {"loss": loss.item(), **stats}.items():  # this rank's shard: the weighted mean
                sums[k] = sums.get(k, 0.0) + float(v) * weights[j]
            tokens += self.count_tokens(micro)
        grad_norm = self.strategy.optimizer_step(self.model, self.optimizer)
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        keys = sorted(sums)
        totals = self.strategy.all_reduce_sum([sums[k] for k in keys] + [len(micro_batches), tokens])
        all_tokens = totals[-1]
        elapsed = time.time() - t0
        metrics = {k: totals[i] / self.world for i, k in enumerate(keys)}  # the mean of the ranks' shards
        metrics.update({"lr": lr, "grad_norm": grad_norm, "timing/step": elapsed,
                        "micro_batches": totals[-2] / self.world,
                        "throughput/tokens_per_s": all_tokens / max(elapsed, 1e-9)})
        return metrics

    @torch.no_grad()
    def evaluate(self) -> dict:
        if not self.eval_items:
            return {}
        self.model.eval()
        mb = self.cfg.trainer.micro_batch_size
        mine = self.eval_items[self.strategy.rank::self.world]
        sums: dict[str, list[float]] = {}
        for j in range(0, len(mine), mb):
            for k, (s, c) in self.eval_batch(self._to_device(self.collate(mine[j:j + mb]))).items():
                acc = sums.setdefault(k, [0.0, 0.0])
                acc[0] += s
                acc[1] += c
        keys = sorted(sums)
        flat = self.strategy.all_reduce_sum([x for k in keys for x in sums[k]]) if keys else []
        return {f"eval/{k}": flat[2 * i] / max(flat[2 * i + 1], 1.0) for i, k in enumerate(keys)}

    def fit(self, extra: Optional[dict] = None) -> dict:
        """Train to the end, export the final model, write summary.json (with `extra`) and return it."""
        tc = self.cfg.trainer
        t_start = time.time()
        micro = (f"{self.accum} micro-batch(es) of {tc.micro_batch_size}" if not self.packing else
                 f"packed micro-batches of <= {tc.micro_batch_tokens} tokens")
        self.logger.info(f"{len(self.train_items)} train items, {self.total_steps} steps of {tc.batch_size} "
                         f"({self.world} rank(s) x {micro}), strategy={self.strategy.name}")
        history = []
        first_loss = None
        while self.step < self.total_steps:
            epoch, offset = divmod(self.step, self.steps_per_epoch)
            batches = self.batch_indices(epoch)
            for index in range(offset, len(batches)):
                if self.step >= self.total_steps:
                    break
                metrics = self.train_step(self.rank_micro_batches(batches[index]))
                self.step += 1
                metrics["epoch"] = epoch + (index + 1) / self.steps_per_epoch
                if first_loss is None:
                    first_loss = metrics["loss"]
                if tc.eval_every and self.step % tc.eval_every == 0 and self.step < self.total_steps:
                    metrics.update(self.evaluate())
                self.logger.log(self.step, self.total_steps, metrics)
                history.append(metrics)
                if tc.save_every and self.step % tc.save_every == 0 and self.step < self.total_steps:
                    self.save_checkpoint()
        final_eval = self.evaluate()
        final_dir = join(self.run_dir, "checkpoints", "final")
        self.export(final_dir, merge_lora=True)
        last = history[-1] if history else {}
        summary = {"stage": self.stage, "steps": self.step, "strategy": self.strategy.name,
                   "num_ranks": self.world, "first_loss": first_loss, "final_loss": last.get("loss"),
                   "wall_seconds": time.time() - t_start, "final_checkpoint": final_dir, **final_eval, **(extra or {})}
        if final_eval:
            self.logger.info("  ".join(f"{k}={v:.4f}" for k, v in final_eval.items()))
        self.logger.write_summary(summary)
        return summary

    # ------------------------------------------------------------------ checkpoints

    def export(self, path: str, merge_lora: bool) -> None:
        """HF-format model (+ tokenizer) at `path`, written by rank 0."""
        # Gemini's parameters live in chunks and 3d's embeddings are padded: both export a gathered state_dict
        state = self.strategy.full_state_dict(self.model) if self.strategy.name.startswith(("colossalai_gemini", "3d")) else None
        if self.strategy.is_rank0:  # complete or absent: a local .tmp renamed, or uploaded and sealed last
            with written_whole(path) as out:
                export_model(self.strategy.unwrap(self.model), out, merge_lora=merge_lora, state_dict=state,
                             tokenizer=self.tokenizer)
        self.strategy.barrier()

    def save_checkpoint(self) -> str:
        """model/ (HF; LoRA adapters only), optimizer/, rng/, then trainer_state.json last, atomically.

        Each rank writes its part where it stands (a remote run directory: a node-local staging directory,
        uploaded when the rank's part is written); rank 0 makes the checkpoint complete after every rank's
        part is there (coati_ray/storage/checkpoint.py)."""
        ckpt = Checkpoint(checkpoint_dir(self.run_dir, self.step))
        if self.strategy.is_rank0:
            ckpt.begin()
        self.strategy.barrier()
        with staged_writes(ckpt.path) as out:
            os.makedirs(os.path.join(out, "rng"), exist_ok=True)
            self.export(os.path.join(out, "model"), merge_lora=False)
            if self.cfg.trainer.save_optimizer:
                self.strategy.save_optimizer(self.optimizer, os.path.join(out, "optimizer"))
            torch.save(torch.get_rng_state(), os.path.join(out, "rng", f"rank_{self.strategy.rank}.pt"))
            self.strategy.barrier()
        self.strategy.barrier()  # every rank's part uploaded
        if self.strategy.is_rank0:
            self.logger.sync()  # the metrics up to this checkpoint, before it becomes the one to resume from
            ckpt.seal({COMPLETE_MARKER: json.dumps({"step": self.step, "world_size": self.world,
                                                    "stage": self.stage})})
            prune_checkpoints(self.run_dir, self.cfg.trainer.keep_checkpoints)
            self.logger.info(f"checkpoint: {ckpt.target}")
        self.strategy.barrier()
        return ckpt.target

    def _load_state(self, ckpt: str) -> None:
        """Restore step, optimiser, lr schedule and RNG from a checkpoint (weights were loaded already)."""
        shown, ckpt = ckpt, readable_path(ckpt, "--resume")
        with open(os.path.join(ckpt, COMPLETE_MARKER)) as f:
            state = json.load(f)
        self.step = int(state["step"])
        opt_dir = os.path.join(ckpt, "optimizer")
        if os.path.isdir(opt_dir):
            self.strategy.load_optimizer(self.optimizer, opt_dir)
        for _ in range(self.step):
            self.scheduler.step()
        rng = os.path.join(ckpt, "rng", f"rank_{self.strategy.rank}.pt")
        if os.path.isfile(rng):
            torch.set_rng_state(torch.load(rng, weights_only=True))
        self.logger.continue_from(self.step)  # rank 0: the run's metrics up to the checkpoint, none past it
        self.logger.info(f"resumed from {shown} at step {self.step}")
