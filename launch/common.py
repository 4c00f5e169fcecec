"""What every launcher shares: arguments, config resolution, the run directory, one-line errors."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Callable, Optional

from coati_ray.config import describe, load_config, save_config
from coati_ray.errors import CoatiError
from coati_ray.utils.run_dir import check_run_dir, clear_run_dir


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line on stderr (what is wrong, and where the options are)."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message}; see --help (config keys: --help-config)\n")


def parser_for(stage: str, description: str) -> argparse.ArgumentParser:
    p = OneLineParser(prog=f"python -m launch.{stage}", description=description)
    p.add_argument("--config", help="YAML config (see configs/)")
    p.add_argument("--output-dir", help="run directory (overrides output_dir)")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="resume from the latest checkpoint in the output dir, or from the checkpoint dir given")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of an earlier run in the output dir (its metrics, summary, checkpoints)")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: auto, else embedded local Ray)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--help-config", action="store_true", help="list every config key with its type and default")
    if stage in ("sft", "rm", "ppo"):
        p.add_argument("--inspect-data", type=int, metavar="N", default=None,
                       help="print N rendered training samples as JSON lines (with the trained spans) and exit")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. trainer.max_steps=10")
    return p


def quiet_libraries() -> None:
    """Library chatter (colossalai's optional-kernel warnings, HF advisories) is not the user's problem."""
    warnings.filterwarnings("ignore")
    import logging

    # bitsandbytes logs at import that an optional hub kernel is missing (we never download kernels)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def stop_cleanly_on_sigterm() -> None:
    """`ray job stop` and schedulers send SIGTERM: raise SystemExit so every `finally` runs and the
    job releases its actors and placement groups itself rather than leaving it to Ray's reaper."""
    import signal

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def resolve_resume(resume: Optional[str], output_dir: str) -> Optional[str]:
    from coati_ray.storage.uri import is_uri, redact
    from coati_ray.utils.run_dir import COMPLETE_MARKER, is_complete_checkpoint, latest_checkpoint

    if resume is None:
        return None
    if resume == "latest":
        found = latest_checkpoint(output_dir)
        if found is None:
            raise CoatiError(f"resume error: no complete checkpoint under '{redact(output_dir)}/checkpoints'; "
                             "run without --resume or pass --resume <checkpoint dir>")
        return found
    if not is_complete_checkpoint(resume):
        marker = "manifest.json: its upload never finished" if is_uri(resume) else COMPLETE_MARKER
        raise CoatiError(f"resume error: '{redact(resume)}' is not a complete checkpoint (no {marker}); "
                         "pass a checkpoints/step_* directory")
    return resume


def print_config_help(cfg_cls) -> int:
    for key, tp, default, help_ in describe(cfg_cls):
        print(f"{key:40s} {tp:28s} {default:14s} {help_}")
    return 0


def parse_args(parser: argparse.ArgumentParser, stage: str, argv: Optional[list[str]]):
    """Our options, with the seeds' flags (launch/seed_flags.py) turned into overrides first; None (after the
    one line) when a seed flag has no equivalent."""
    from launch.seed_flags import translate

    notes: list[str] = []
    try:
        argv, types = translate(stage, list(sys.argv[1:] if argv is None else argv), notes.append)
    except CoatiError as e:  # a refused command prints its one line only
        fail(e)
        return None
    try:  # options and key=value overrides in any order (seed flags became overrides at the end)
        args = parser.parse_intermixed_args(argv)
    except SystemExit as e:
        return None if e.code else _exit_zero()
    if stage == "ppo":
        from launch.seed_flags import positional_prompt_file

        args.overrides = positional_prompt_file(args.overrides, notes.append)
    for line in notes:
        print(f"note: {line}", file=sys.stderr, flush=True)
    args.claimed_model_types = types
    return args


def _exit_zero():
    raise SystemExit(0)  # --help printed its text


def load_job(cfg_cls, args) -> object:
    cfg = load_config(cfg_cls, args.config, args.overrides, output_dir=args.output_dir)
    cfg.validate()
    if getattr(args, "claimed_model_types", None):
        from launch.seed_flags import check_model_types

        check_model_types(cfg, args.claimed_model_types)
    return cfg


def fail(err: BaseException) -> int:
    print(f"error: {err}", file=sys.stderr, flush=True)
    return 2


def run_supervised_stage(stage: str, cfg_cls, run_fn: Callable, trainer_cls, description: str,
                         argv: Optional[list[str]] = None,
                         starting_point: Optional[Callable[[object, Optional[str]], Optional[str]]] = None) -> int:
    """Parse, validate (config and data) before anything heavy, then train on 1 rank or a Ray group."""
    args = parse_args(parser_for(stage, description), stage, argv)
    if args is None:
        return 2
    quiet_libraries()
    stop_cleanly_on_sigterm()
    if args.help_config:
        return print_config_help(cfg_cls)
    try:
        cfg = load_job(cfg_cls, args)
        if args.print_config:
            import yaml

            from coati_ray.config import to_dict

            from coati_ray.utils.redact import redact_config

            print(yaml.safe_dump(redact_config(to_dict(cfg)), sort_keys=False))
            return 0
        if getattr(args, "inspect_data", None) is not None:
            return inspect_data(cfg, trainer_cls, args.inspect_data)
        check_run_dir(cfg.output_dir, resume=args.resume is not None, overwrite=args.overwrite)
        resume_from = resolve_resume(args.resume, cfg.output_dir)
        if starting_point is not None:  # a stage's own way to name where it starts (pretrain: load_checkpoint)
            resume_from = starting_point(cfg, resume_from)
        preflight_data(cfg, trainer_cls)
    except CoatiError as e:
        return fail(e)
    if args.overwrite:  # only now that config and data are known good: a refused run deletes nothing
        clear_run_dir(cfg.output_dir)
    from coati_ray.storage.uri import is_uri, join

    if not is_uri(cfg.output_dir):
        os.makedirs(cfg.output_dir, exist_ok=True)
    save_config(cfg, join(cfg.output_dir, "config.yaml"))
    try:
        if cfg.resources.num_ranks == 1:  # the one rank is this process
            from coati_ray.utils.cpu import place_threads

            place_threads(cfg.resources.cpu_cores, cfg.resources.nice, "resources")
            # a Booster strategy (ddp, zero2, gemini, 3d) forms a torch.distributed world even of one rank: it
            # meets itself through an in-process store, and its gloo device stays on loopback
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
            summary = run_fn(cfg, resume_from=resume_from)
        else:
            summary = run_on_ray(stage, cfg, run_fn, resume_from, args.ray_address)
    except CoatiError as e:
        return fail(e)
    print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, dict)}, indent=2))
    return 0


def stage_tokenizer(cfg):
    """The tokenizer a supervised stage trains with, carrying the chat template it renders with."""
    from coati_ray.models.loading import check_tokenizer_fits, tokenizer_for

    tokenizer = tokenizer_for(cfg.model, cfg.data)
    check_tokenizer_fits(tokenizer, cfg.model.local_path, "model.path")
    return tokenizer


def inspect_data(cfg, trainer_cls, n: int) -> int:
    """`--inspect-data N`: the first N training samples as the stage will see them, one JSON line each."""
    tokenizer = stage_tokenizer(cfg)
    d = cfg.data
    items, _ = trainer_cls.build_dataset(d.train_path, tokenizer, d, n)
    for item in items[:n]:
        print(json.dumps(trainer_cls.inspect(item, tokenizer), ensure_ascii=False), flush=True)
    return 0


def preflight_data(cfg, trainer_cls) -> None:
    """Read the tokenizer and every row now, so a bad row stops the run before Ray or a model starts."""
    tokenizer = stage_tokenizer(cfg)
    d = cfg.data
    items, _ = trainer_cls.build_dataset(d.train_path, tokenizer, d, d.max_samples)
    if d.eval_path:
        trainer_cls.build_dataset(d.eval_path, tokenizer, d, None, "eval")
    if len(items) < cfg.trainer.batch_size:
        raise CoatiError(f"data error: {d.train_path} has {len(items)} usable rows, fewer than one global batch "
                         f"(trainer.batch_size={cfg.trainer.batch_size}); lower the batch size or add data")


def run_on_ray(stage: str, cfg, run_fn: Callable, resume_from: Optional[str], address: Optional[str]) -> dict:
    import ray

    from actors.cluster import check_output_on_every_node, connect
    from actors.group import TrainerGroup, user_errors

    started = connect(address, dashboard=cfg.ray.dashboard, dashboard_port=cfg.ray.dashboard_port)
    r = cfg.resources
    try:
        check_output_on_every_node(cfg.output_dir)  # before any actor: every node sees (or can write) output_dir
        with user_errors(), TrainerGroup(f"{stage}-trainer", r.num_ranks, r.num_cpus_per_rank,
                                         r.num_gpus_per_rank, r.torch_threads, cpu_cores=r.cpu_cores, nice=r.nice) as group:
            group.check_shared_output(cfg.output_dir)
            return group.run(run_fn, cfg, resume_from=resume_from)[0]
    finally:
        if started:
            ray.shutdown()
