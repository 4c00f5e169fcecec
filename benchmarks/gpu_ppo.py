"""PPO on one GPU: step time, samples/s per GPU, generated tokens/s, TFLOP/s and peak memory per group, and
weight-sync seconds / GB/s per transport, for opt-125m/350m/1.3b-shaped models under ddp, zero2 and gemini;
TRL's PPO trainer on the same GPU and workload as the side-by-side (when trl is importable).

    python -m benchmarks.gpu_ppo [--sizes opt-125m opt-350m opt-1.3b] [--strategies ddp colossalai_zero2 colossalai_gemini]
                                 [--placements separate colocated] [--transports object_store ipc collective]
                                 [--trl [--trl-precisions fp32 bf16]] [--set KEY=VALUE ...] [--per-step] [--tag T]
                                 [--repeats 3] [--out gpu.json]

`--placements colocated` runs the actor group's ranks as generators (no maker, no weight copy; the two groups
take 0.45 of the GPU each). `--set` overrides every run of ours (the Gemini diagnosis: actor_trainer.optim.lr=0
algorithm.behaviour_correction=measure), and `--per-step` keeps each step's KL, response length, grad norm and
behaviour gap in the row. `mfu_*` are each group's MFU (coati_ray/utils/flops.py) where the GPU's peak is known.

Models are built locally from OPT configs of those shapes (random weights, the repo's tokenizer: throughput
does not depend on the values) and saved in Hugging Face format. One GPU is shared by fractions: the maker
0.3, the actor group 0.3, the critic group 0.3. Workload: 32 prompts per step, up to 64 new tokens (both sides stop
a row at EOS; random weights rarely emit it), one PPO epoch in micro-batches of 8.

The side by side follows benchmarks/side_by_side.py as the CPU one does: TRL in fp32 (against our ddp, fp32) and in
bf16 (against our ZeRO-2 and Gemini, bf16), each labelled; a step is the time between consecutive step ends on both
sides; `--repeats` interleaved rounds, ours and TRL's runs alternating within each model size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks.common import OUT, REPO, save, steady
from benchmarks.side_by_side import interleave, run_rate

SHAPES = {"opt-125m": (768, 12, 12), "opt-350m": (1024, 24, 16), "opt-1.3b": (2048, 24, 32)}
ROLLOUT, NEW_TOKENS, MICRO = 32, 64, 8


def build_policy(name: str) -> str:
    """The OPT-shaped causal LM of `name` (random weights, the repo's tokenizer), built once."""
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    from coati_ray.models.loading import load_tokenizer

    path = os.path.join(OUT, "gpu_models", name)
    if not os.path.isfile(os.path.join(path, "tokenizer_config.json")):  # written last: a complete model
        tok = load_tokenizer(os.path.join(REPO, "assets", "tokenizer"))
        hidden, layers, heads = SHAPES[name]
        cfg = OPTConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, ffn_dim=4 * hidden,
                        num_attention_heads=heads, word_embed_proj_dim=hidden, max_position_embeddings=2048,
                        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        torch.manual_seed(0)
        OPTForCausalLM(cfg).save_pretrained(path, safe_serialization=True)
        tok.save_pretrained(path)
    return path


def build(name: str) -> tuple[str, str]:
    """(policy, reward model) of `name`: the policy and a value head on it, built once."""
    from coati_ray.models import RewardModel

    path, rm = build_policy(name), os.path.join(OUT, "gpu_models", name + "-rm")
    if not os.path.isfile(os.path.join(rm, "value_head.safetensors")):
        RewardModel.from_pretrained(path).save_pretrained(rm)
    return path, rm


PER_STEP = ("kl", "response_length", "reward", "actor/grad_norm", "actor/loss", "timing/sync", "behaviour/ratio_max",
            "behaviour/log_ratio_abs_mean", "behaviour/capped_frac")  # --per-step: the Gemini diagnosis's series


WATCHED = ("sync/max_abs_delta", "sync/max_abs_delta_key", "sync/trainer_version", "sync/maker_version",
           "actor/max_abs_update", "actor/max_abs_update_key", "watch_seconds")


class WeightWatch:
    """--per-step's weight series, read after each step (the driver's on_step; not timed: a 1.3B model crosses the
    object store twice per step). `sync/max_abs_delta` (and `_key`): the largest |Δ| between the actor trainer's
    weights (Gemini: gathered, as a sync sends them) cast to the maker's dtype and the maker's own, where both hold
    the same step's weights (else only the two versions are kept); a non-zero value puts the fault in the transport
    or the load. `actor/max_abs_update`: the largest |Δ| of the trainer's weights since the step before: exactly 0 at
    lr 0 (a change there puts the fault in the trainer's update or Gemini's gather). Under bf16 the weights read are
    bf16 working copies, so at lr 1e-6 a change shows as whole bf16 steps (up to |w|/128 of the largest weights:
    about 1e-3 at |w| 0.1); far above that, or NaN, is the fault. Colocated runs have no maker. `watch_seconds`:
    what the watch cost (outside the step time, inside the phase's)."""

    def __init__(self):
        self.previous = None

    def __call__(self, job) -> dict:
        import ray

        from coati_ray.models.weights import max_abs_delta

        rank0 = job.groups["actor"][0]
        trainer = ray.get(rank0.weights.remote())
        out = {"sync/trainer_version": ray.get(rank0.steps_trained.remote())["steps"]}
        if job.makers:
            maker = ray.get(next(iter(job.makers.values())).weights.remote())
            out["sync/maker_version"] = maker["version"]
            if maker["version"] == out["sync/trainer_version"]:
                out["sync/max_abs_delta"], out["sync/max_abs_delta_key"] = max_abs_delta(trainer, maker["actor"])
        if self.previous is not None:
            out["actor/max_abs_update"], out["actor/max_abs_update_key"] = max_abs_delta(self.previous, trainer)
        self.previous = trainer
        return out


def our_runs(strategies: list, placements: list, transports: list) -> list[tuple[str, str, str]]:
    """(strategy, placement, transport) of every run of ours: a transport only where weights move (separate)."""
    return [(strategy, placement, transport) for strategy in strategies for placement in placements
            for transport in (transports if placement == "separate" else ["none"])]


def job_config(path: str, rm: str, name: str, strategy: str, steps: int, transport: str, placement: str = "separate",
               extra: tuple = ()):
    """The validated RLConfig of one run of ours on one GPU: actor and critic from `path`, reward model `rm`."""
    from coati_ray.config import load_config
    from coati_ray.config.rl import RLConfig

    precision = "fp32" if strategy == "ddp" else "bf16"
    dtype = "float32" if strategy == "ddp" else "bfloat16"
    cfg = load_config(RLConfig, os.path.join(REPO, "configs", "ppo_tiny.yaml"), [
        f"actor.path={path}", f"critic.path={path}", f"reward_model.path={rm}", f"maker.dtype={dtype}",
        f"reward_model.dtype={dtype}", f"data.prompt_path={os.path.join(REPO, 'data', 'prompts', 'train.jsonl')}",
        f"generation.max_new_tokens={NEW_TOKENS}",
        f"algorithm.rollout_batch_size={ROLLOUT}", f"algorithm.train_batch_size={ROLLOUT}", f"algorithm.micro_batch_size={MICRO}",
        f"algorithm.max_steps={steps}", "maker.num_makers=1", f"maker.batch_size={ROLLOUT}", "maker.num_gpus=0.3",
        "maker.num_cpus=1", "maker.torch_threads=4", "buffer.capacity=128", f"placement={placement}"] + (
        [f"weight_sync.transport={transport}"] if placement == "separate" else ["maker.num_gpus=0", "maker.dtype=auto"]) + [
        f"{g}.{k}" for g in ("actor_trainer", "critic_trainer") for k in (
            f"strategy.name={strategy}", f"strategy.precision={precision}", "resources.num_ranks=1",
            # colocated: no maker, so the two groups take the GPU between them
            f"resources.num_gpus_per_rank={0.3 if placement == 'separate' else 0.45}", "resources.num_cpus_per_rank=1",
            "resources.torch_threads=4")] + list(extra),
        output_dir=os.path.join(OUT, "gpu", f"{name}-{strategy}-{placement}-{transport}"))
    cfg.validate()
    return cfg


def run(name: str, strategy: str, steps: int, transport: str, placement: str = "separate",
        extra: tuple = (), per_step: bool = False, progress=None) -> dict:
    """One run of ours -> its row. With `per_step`, each step's series (PER_STEP, WeightWatch's) are kept, handed to
    `progress(row so far)` after every step (a run its timeout stops leaves them in the --out file), and kept in the
    error row of a run that fails part way (a diverging model is what the series are for)."""
    from actors.driver import RLJob

    path, rm = build(name)
    cfg = job_config(path, rm, name, strategy, steps, transport, placement, extra)
    precision = cfg.actor_trainer.strategy.precision
    rows, ends, watch, watched = [], [], WeightWatch() if per_step else None, [0.0]
    label = {"model": name, "strategy": strategy, "placement": placement,
             "transport": transport if placement == "separate" else "none", "precision": precision,
             **({"overrides": list(extra)} if extra else {})}

    def series() -> list:
        return [{k: r[k] for k in PER_STEP + WATCHED if k in r} for r in rows]

    def on_step(job, step, metrics):  # after everything the driver does per step, as TRL's on_step_end
        ends.append(time.perf_counter() - watched[0])  # the clock stops while the weights are watched
        rows.append(metrics)
        if watch is not None:
            t = time.perf_counter()
            metrics.update(watch(job))
            metrics["watch_seconds"] = time.perf_counter() - t
            watched[0] += metrics["watch_seconds"]
            if progress is not None:
                progress({**label, "error": f"cut short after {len(rows)} of {steps} steps", "per_step": series()})

    t0 = time.perf_counter()
    try:
        RLJob(cfg, log=False, overwrite=True).run(on_step=on_step)
    except Exception as e:
        if not per_step:
            raise
        return {**label, "error": f"{type(e).__name__}: {e}"[:600], "per_step": series()}
    rate = run_rate(ends, ROLLOUT)
    step_s = rate["step_seconds"]
    sync_s = steady([r["timing/sync"] for r in rows])
    sync_bytes = rows[-1]["sync/bytes"]
    out = {**label, "steps": len(rows),
            "wall_seconds": time.perf_counter() - t0, "step_seconds": step_s, "steady_steps": rate["steady_steps"],
            "driver_timing_step": steady([r["timing/step"] for r in rows]),
            "samples_per_s_per_gpu": ROLLOUT / step_s,
            "generated_tokens_per_s": steady([r["throughput/generated_tokens_per_s"] for r in rows]),
            "generate_seconds": steady([r["timing/generate"] for r in rows]),
            "sync_seconds": sync_s, "sync_bytes": sync_bytes, "sync_gb_per_s": sync_bytes / max(sync_s, 1e-9) / 1e9,
            **{f"tflops_{g}": steady([r[f"tflops/{g}"] for r in rows]) for g in (
                "makers", "actor_trainer", "critic_trainer")},
            **{f"peak_gb_{g}": max(r.get(f"memory/{g}_peak_gb", 0.0) for r in rows) for g in (
                "makers", "actor", "critic")},
            **{f"mfu_{g}": steady([r[f"mfu/{g}"] for r in rows]) for g in ("makers", "actor_trainer", "critic_trainer")
               if all(f"mfu/{g}" in r for r in rows)}}
    if per_step:
        out["per_step"] = series()
    return out


def run_trl(name: str, steps: int, precision: str = "fp32") -> dict:
    """TRL's PPOTrainer (benchmarks/trl_ppo.py, in a subprocess) on the same model, prompts and workload, in
    `precision` said explicitly (fp32 against our ddp row, bf16 against our ZeRO-2/Gemini rows; TRL's PPO keeps
    policy, reference, reward and value models on one device)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from coati_ray.config.rl import PromptDataConfig
    from coati_ray.experience.prompts import read_prompt_data
    from coati_ray.models.loading import load_tokenizer

    path, _ = build(name)
    inputs = os.path.join(OUT, "gpu_trl", name)
    os.makedirs(inputs, exist_ok=True)
    tok = load_tokenizer(path)
    items, _, _ = read_prompt_data(PromptDataConfig(prompt_path=os.path.join(REPO, "data", "prompts", "train.jsonl"),
                                                    max_prompt_length=32), tok)
    with open(os.path.join(inputs, "prompts.jsonl"), "w") as f:
        f.writelines(json.dumps({"input_ids": it["input_ids"]}) + "\n" for it in items)
    cfg = AutoConfig.from_pretrained(path, num_labels=1)
    cfg.pad_token_id = tok.pad_token_id
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(os.path.join(inputs, "rm"))
    with open(os.path.join(inputs, "workload.json"), "w") as f:
        json.dump({"model": path, "rollout": ROLLOUT, "micro": MICRO, "epochs": 1, "new_tokens": NEW_TOKENS,
                   "maker_batch": ROLLOUT, "kl_coef": 0.05, "lr": 1e-6}, f)
    out = os.path.join(inputs, "result.json")
    cmd = [sys.executable, os.path.join(REPO, "benchmarks", "trl_ppo.py"), "--inputs", inputs, "--steps", str(steps),
           "--threads", "4", "--gpu", "--precision", precision, "--out", out]
    if os.path.exists(out):
        os.remove(out)
    subprocess.run(cmd, check=True, timeout=900)
    with open(out) as f:
        raw = json.load(f)
    rate = run_rate(raw.pop("step_ends"), raw["samples_per_step"])
    return {"model": name, "strategy": f"trl-{precision}", **raw, **rate, "samples_per_s_per_gpu": rate["samples_per_s"]}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", nargs="*", default=list(SHAPES))
    p.add_argument("--strategies", nargs="*", default=["ddp", "colossalai_zero2", "colossalai_gemini"])
    p.add_argument("--transports", nargs="*", default=["object_store"], help="of the separate placement")
    p.add_argument("--placements", nargs="*", default=["separate"], choices=["separate", "colocated"])
    p.add_argument("--trl-precisions", nargs="*", default=["fp32", "bf16"], help="with --trl")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides of every run of ours, e.g. actor_trainer.optim.lr=0 "
                        "algorithm.behaviour_correction=measure (the Gemini diagnosis)")
    p.add_argument("--per-step", action="store_true", help="keep each step's KL, response length, grad norm, "
                                                           "behaviour gap and sync seconds in the row, "
                                                           "and the weights' max |Δ| trainer-maker and step to step "
                                                           "(WeightWatch; slows the steps it follows)")
    p.add_argument("--tag", default="", help="a label kept in every row (e.g. lr0)")
    p.add_argument("--steps", type=int, default=12, help="steps per run, the first 2 warm-up")
    p.add_argument("--trl", action="store_true", help="also TRL's PPO on each size, in fp32 and in bf16")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds of every configuration per size")
    p.add_argument("--out", default=None, help="also write the rows to this JSON file")
    p.add_argument("--plan", action="store_true", help="print the runs this command would make, and stop")
    p.add_argument("--section", default="gpu", help="the benchmarks/RESULTS.json section this run writes (a "
                                                     "diagnosis run must not replace the sweep's)")
    return p.parse_args(argv)


def plan(args) -> list[tuple[str, str, str, int]]:
    """(model, side, configuration, round) of every run, in the order they run."""
    ours = ["/".join(c) for c in our_runs(args.strategies, args.placements, args.transports)]
    theirs = list(args.trl_precisions) if args.trl else []
    return [(name, side, config, rnd) for name in args.sizes for side, config, rnd in
            interleave(ours, theirs, args.repeats)]


def main(argv=None) -> None:
    import ray

    args = parse_args(argv)
    if args.plan:
        for run_ in plan(args):
            print(" ".join(map(str, run_)))
        return
    import torch

    rows = []
    stamp = {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
             "command": "python -m benchmarks.gpu_ppo " + " ".join(argv or sys.argv[1:]),
             "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}

    def write(partial=None):  # the --out file, brought back from the GPU machine (benchmarks/gpu_results.py)
        if args.out:
            with open(args.out, "w") as f:
                json.dump({**stamp, "rows": rows + ([partial] if partial else [])}, f, indent=2)

    def keep(row):
        rows.append(row)
        print(json.dumps(row), flush=True)
        write()

    ray.init(include_dashboard=False, log_to_driver=False, namespace="coati")
    try:
        for name, side, config, rnd in plan(args):
            tag = {"tag": args.tag} if args.tag else {}
            try:
                if side == "ours":
                    strategy, placement, transport = config.split("/")
                    keep({"round": rnd, **tag, **run(name, strategy, args.steps, transport, placement,
                                                     tuple(args.set), args.per_step,
                                                     lambda row: write({"round": rnd, **tag, **row}))})
                else:
                    keep({"round": rnd, **tag, **run_trl(name, args.steps, config)})
            except Exception as e:  # one failing combination is a result, not the end of the sweep
                keep({"model": name, "strategy": config.split("/")[0] if side == "ours" else f"trl-{config}",
                      "round": rnd, **tag, "error": f"{type(e).__name__}: {e}"[:600]})
    finally:
        ray.shutdown()
    save(args.section, {**stamp, "rows": rows})


if __name__ == "__main__":
    main()
