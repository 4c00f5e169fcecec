"""[expand_vocab ->] [pretrain ->] SFT -> RM -> PPO in one Ray job: each stage hands the next an HF checkpoint.

    summary = run_pipeline(cfg)   # cfg: a linked, validated PipelineConfig

SFT and RM run as trainer groups (one actor per rank) and PPO as its actor groups, all on the
same Ray (an existing cluster, or an embedded local one this call starts and stops). With
`resume`, a stage whose final checkpoint and summary exist is reused and an interrupted stage
continues from its newest checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable, Optional

import ray

from actors.cluster import check_cluster_fits, check_output_on_every_node, connect
from actors.driver import RLJob
from actors.group import TrainerGroup, user_errors
from coati_ray.config import save_config
from coati_ray.evaluation.lm_eval_stages import evaluate_after
from coati_ray.utils.progress import MetricsTail
from coati_ray.storage.checkpoint import is_complete, written_whole
from coati_ray.storage.fs import exists, read_text, write_text
from coati_ray.storage.uri import is_uri, join
from coati_ray.utils.run_dir import clear_run_dir, latest_checkpoint

PROGRESS_KEYS = {"pretrain": ("loss", "lr"), "sft": ("loss", "lr"), "rm": ("loss", "acc")}


def completed_stage(stage_dir: str) -> Optional[dict]:
    """The summary of a stage that finished (summary.json and a complete checkpoints/final), else None."""
    summary = join(stage_dir, "summary.json")
    if exists(summary) and is_complete(join(stage_dir, "checkpoints", "final")):
        return json.loads(read_text(summary))
    return None


def run_pipeline(cfg, ray_address: Optional[str] = None, resume: bool = False,
                 info: Callable[[str], None] = print) -> tuple[dict, dict]:
    """Run the stages in order; returns ({stage: its summary}, {stage: seconds})."""
    started = connect(ray_address, dashboard=cfg.ray.dashboard, dashboard_port=cfg.ray.dashboard_port, info=info)
    summaries, seconds = {}, {}
    try:
        with user_errors():
            check_cluster_fits(cfg.ppo, extra="ppo.")  # before minutes of SFT and RM, not after
            check_output_on_every_node(cfg.output_dir)  # before any actor: every node sees (or can write) it
            evaluate_after(cfg, "base", resume, info)  # lm-eval's "before" column (when cfg.evaluate asks)
            for stage in cfg.stages:
                stage_cfg = getattr(cfg, stage)
                done = completed_stage(stage_cfg.output_dir) if resume else None
                if done is not None:
                    info(f"[pipeline] {stage}: already complete in {stage_cfg.output_dir}, reused")
                    summaries[stage], seconds[stage] = done, 0.0
                    evaluate_after(cfg, stage, resume, info)
                    continue
                resume_from = latest_checkpoint(stage_cfg.output_dir) if resume else None
                if resume_from is None:  # interrupted before its first checkpoint: that stage starts again
                    clear_run_dir(stage_cfg.output_dir)
                info(f"[pipeline] {stage}: starting" + (f" from {resume_from}" if resume_from else ""))
                if not is_uri(stage_cfg.output_dir):
                    os.makedirs(stage_cfg.output_dir, exist_ok=True)
                save_config(stage_cfg, join(stage_cfg.output_dir, "config.yaml"))
                t = time.time()
                if stage == "pretrain":  # its data, tokenized with the tokenizer it trains with (a rerun reuses it)
                    _prepare_pretrain_data(cfg, info)
                summaries[stage] = _run_stage(stage, stage_cfg, resume_from, ray_address)
                seconds[stage] = time.time() - t
                info(f"[pipeline] {stage}: done in {seconds[stage]:.0f}s")
                evaluate_after(cfg, stage, resume, info)
    finally:
        if started:
            ray.shutdown()
    return summaries, seconds


def _prepare_pretrain_data(cfg, info: Callable[[str], None]) -> None:
    """Tokenized once into `prepared_dir`; a rerun from the same inputs and settings reuses it. Under a URI output_dir
    it is prepared here and uploaded whole (a manifest last), and each pretrain rank reads it through its node's
    cache; a complete one is checked against the inputs through this node's copy."""
    import shutil

    from coati_ray.data.prepare import cache_key, jsonl_files, prepare_to_disk
    from coati_ray.errors import ConfigError
    from coati_ray.storage.uri import redact

    p, model, target = cfg.prepare, cfg.pretrain.model, cfg.prepared_dir
    inputs = [d for d in p.data_input_dirs.split(",") if d]

    def prepare(out: str) -> None:
        prepare_to_disk("pretrain", inputs, model.local_tokenizer_path, out, cfg.pretrain.data.max_length,
                        p.num_spliced_dataset_bins, p.seed, info=lambda line: info(f"[pipeline] prepare: {line}"),
                        trust_remote_code=model.trust_remote_code)

    if not is_uri(target):
        prepare(target)
    elif is_complete(target):  # a rerun: its inputs and settings compared without downloading the data
        key = cache_key("pretrain", jsonl_files(inputs), model.local_tokenizer_path, cfg.pretrain.data.max_length,
                        p.num_spliced_dataset_bins, p.seed)
        if json.loads(read_text(join(target, "prepared.json"))).get("key") != key:
            raise ConfigError(f"config error: '{redact(target)}' holds data prepared from other inputs or settings; "
                              "pass --overwrite to prepare it again, or use another --output-dir")
        info(f"[pipeline] prepare: {redact(target)} is already prepared from these inputs and settings (key {key})")
    else:
        with written_whole(target) as out:
            prepare(out)
            shutil.rmtree(os.path.join(out, "cache"), ignore_errors=True)  # a local speed-up only: not uploaded


def _expand_vocab(stage_cfg) -> dict:
    """In the driver: one model load and save, no training."""
    from coati_ray.models.hub import local_dir
    from coati_ray.models.vocab import expand_checkpoint

    final = join(stage_cfg.output_dir, "checkpoints", "final")
    source = local_dir(stage_cfg.source, stage_cfg.revision, "expand_vocab.source")
    if is_uri(final):  # written here, then uploaded and sealed: complete or absent, as the local rename is
        with written_whole(final) as out:
            report = expand_checkpoint(source, stage_cfg.pieces, os.path.join(out, "expanded"))
            for name in os.listdir(os.path.join(out, "expanded")):
                os.replace(os.path.join(out, "expanded", name), os.path.join(out, name))
            os.rmdir(os.path.join(out, "expanded"))
    else:
        report = expand_checkpoint(source, stage_cfg.pieces, final)
    summary = {"stage": "expand_vocab", **report, "final_checkpoint": final}
    write_text(join(stage_cfg.output_dir, "summary.json"), json.dumps(summary, indent=1))
    return summary


def _run_stage(stage: str, stage_cfg, resume_from: Optional[str], ray_address: Optional[str]) -> dict:
    if stage == "ppo":  # a fresh stage's directory was cleared above; an interrupted one resumes its checkpoint
        return RLJob(stage_cfg, resume_from=resume_from, ray_address=ray_address,
                      overwrite=resume_from is None).run()
    if stage == "expand_vocab":
        return _expand_vocab(stage_cfg)
    if stage == "pretrain":
        from coati_ray.trainers.pretrain import run_pretrain as run_fn
    elif stage == "sft":
        from coati_ray.trainers.sft import run_sft as run_fn
    else:
        from coati_ray.trainers.rm import run_rm as run_fn
    r = stage_cfg.resources
    with TrainerGroup(f"{stage}-trainer", r.num_ranks, r.num_cpus_per_rank, r.num_gpus_per_rank,
                      r.torch_threads, cpu_cores=r.cpu_cores, nice=r.nice) as group, \
            MetricsTail(stage_cfg.output_dir, stage, stage_cfg.trainer.max_steps, PROGRESS_KEYS[stage]):
        group.check_shared_output(stage_cfg.output_dir)
        return group.run(run_fn, stage_cfg, resume_from=resume_from)[0]
