"""What every benchmark shares: the tiny models it runs on, a PPO config, the machine, the results."""

from __future__ import annotations

import json
import os
import platform
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
OUT = os.path.join(REPO, "runs", "bench")
RESULTS = os.path.join(OUT, "results")
MODEL = os.path.join(REPO, "assets", "models", "tiny-llama-h128")  # 4 layers x 128, built by `make assets`
PROMPTS = os.path.join(REPO, "data", "prompts", "train.jsonl")

# The workload every throughput figure uses (ours and TRL's): 16 prompts per step, 16 new tokens,
# one PPO epoch over one mini-batch of 16 in micro-batches of 4.
ROLLOUT, NEW_TOKENS, MICRO, EPOCHS = 16, 16, 4, 1


# A second workload where compute dominates on this machine: a llama of 39M parameters (10 layers x 512,
# random weights: throughput does not depend on the values) generating 64 new tokens.
MEDIUM_SHAPE = {"hidden": 512, "layers": 10, "heads": 8}
WORKLOADS = {"tiny": {"new_tokens": NEW_TOKENS}, "medium": {"new_tokens": 64}}


def workload_model(workload: str = "tiny") -> str:
    """The actor/critic base of a workload: the tiny model of `make assets`, or the medium llama built
    once under runs/bench/models with the same tokenizer."""
    if workload == "tiny":
        return MODEL
    path = os.path.join(OUT, "models", "llama-medium")
    if not os.path.isfile(os.path.join(path, "config.json")):
        from coati_ray.models.loading import load_tokenizer
        from coati_ray.models.tiny import build_tiny_model

        build_tiny_model("llama", load_tokenizer(MODEL), path, **MEDIUM_SHAPE)
    return path


def reward_model_dir(workload: str = "tiny") -> str:
    """A reward model laid out as the RM stage saves it: the base model plus a seeded random head."""
    path = os.path.join(OUT, "models", "rm" if workload == "tiny" else f"rm-{workload}")
    if not os.path.isfile(os.path.join(path, "value_head.safetensors")):
        import torch

        from coati_ray.models import RewardModel

        torch.manual_seed(0)
        RewardModel.from_pretrained(workload_model(workload)).save_pretrained(path)
    return path


def ppo_config(out_dir: str, *overrides: str, workload: str = "tiny"):
    from coati_ray.config import load_config
    from coati_ray.config.rl import RLConfig

    model, new_tokens = workload_model(workload), WORKLOADS[workload]["new_tokens"]
    cfg = load_config(RLConfig, os.path.join(REPO, "configs", "ppo_tiny.yaml"), [
        f"actor.path={model}", f"critic.path={model}", f"reward_model.path={reward_model_dir(workload)}",
        f"data.prompt_path={PROMPTS}", "data.max_prompt_length=32", f"generation.max_new_tokens={new_tokens}",
        f"algorithm.rollout_batch_size={ROLLOUT}", f"algorithm.train_batch_size={ROLLOUT}", f"algorithm.micro_batch_size={MICRO}",
        f"algorithm.ppo_epochs={EPOCHS}", "maker.batch_size=8", "maker.num_makers=1", "maker.num_cpus=0.5",
        "actor_trainer.resources.num_ranks=1", "actor_trainer.strategy.name=naive", "buffer.capacity=64",
        "buffer.timeout_s=600", *overrides], output_dir=out_dir)
    cfg.validate()
    return cfg


def pinned_overrides(roles: tuple = ("actor", "critic")) -> list[str]:
    """Makers on the first half of the cores, the trainer groups of `roles` on the rest (one core each way
    here; GRPO has no critic group to pin)."""
    cores = sorted(os.sched_getaffinity(0))
    makers, trainers = cores[:max(1, len(cores) // 2)], cores[max(1, len(cores) // 2):] or cores
    return [f"maker.cpu_cores={makers}", *(f"{role}_trainer.resources.cpu_cores={trainers}" for role in roles)]


def niced_overrides(roles: tuple = ("actor", "critic"), nice: int = 19) -> list[str]:
    """The trainer groups of `roles` at nice `nice`: on cores they share with the makers (at Ray's 15),
    a core both want goes mostly to the makers (CFS weights 36 : 15 at nice 15 : 19)."""
    return [f"{role}_trainer.resources.nice={nice}" for role in roles]


def steady(values: list[float], skip: int = 2) -> float:
    """Mean after the first `skip` (warm-up) values."""
    kept = values[skip:] if len(values) > skip else values
    return sum(kept) / max(len(kept), 1)


def machine() -> dict:
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "os": platform.platform()}


def versions(*names: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            out[n] = None
    return out


RESULTS_JSON = os.path.join(REPO, "benchmarks", "RESULTS.json")


def save(name: str, result: dict, stamp_machine: bool = True) -> str:
    """Keep `result` as runs/bench/results/<name>.json and as section `name` of the committed
    benchmarks/RESULTS.json, which RESULTS.md is written from: a benchmark run alone (`make soak`)
    replaces its own section and leaves the others as they were measured. `stamp_machine=False` (a partial run
    kept beside a full one, naming its own CPU) leaves RESULTS.json's machine and versions as they were."""
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    result = {"measured_at": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": commit(), **result}
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    data = read_results()
    data[name] = result
    if stamp_machine or "machine" not in data:
        data["machine"] = machine()
        data["versions"] = versions("torch", "transformers", "ray", "colossalai", "peft", "datasets")
    write_results(data)
    print(f"[bench] {name}: " + json.dumps({k: v for k, v in result.items() if not isinstance(v, (dict, list))}))
    return path


def update_section(name: str, values: dict, replaces: tuple = ()) -> None:
    """Set `values` in section `name` of RESULTS.json, keeping the rest of it (and when it was measured) except the
    keys of `replaces` that `values` no longer holds."""
    data = read_results()
    section = data.setdefault(name, {})
    for key in replaces:
        section.pop(key, None)
    section.update(values)
    write_results(data)


def write_results(data: dict) -> None:
    with open(RESULTS_JSON + ".tmp", "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(RESULTS_JSON + ".tmp", RESULTS_JSON)


def commit() -> str:
    """The code measured: HEAD, with "+dirty" when the tracked files differ from it."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=REPO).returncode != 0
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def read_results() -> dict:
    if not os.path.isfile(RESULTS_JSON):
        return {}
    with open(RESULTS_JSON) as f:
        return json.load(f)


def load(name: str):
    """Section `name` of benchmarks/RESULTS.json (None when never measured)."""
    return read_results().get(name)


def f(x, digits=2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"
