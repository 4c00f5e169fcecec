"""Configuration of a PPO job's Ray runtime: the experience makers, the replay buffer, the weight sync and the
watchdog (the PPO maths and data are in coati_ray/config/rl.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from coati_ray.config.checks import _fail, check_cpu_cores, check_nice
from coati_ray.config.schema import opt


@dataclass
class AutoscaleConfig:
    """maker.autoscale: the maker pool sizes itself (coati_ray/autoscale.py): one more maker when the trainers
    waited for experience through a whole window, one fewer when the buffer held the next step through one."""

    min: int = opt(1, "fewest makers the pool shrinks to")
    max: int = opt(4, "most makers the pool grows to (and never more than the batches that can be in flight at "
                      "once: batches per step x (max_staleness + 1))")
    window: int = opt(3, "steps in a row a signal must hold before the pool changes by one; the window starts "
                         "again after each change, and a change that reverses the one before needs twice the "
                         "window (up to 8x), so the pool settles instead of flapping")
    idle_above: float = opt(0.2, "grow when the trainers waited for experience more than this share of every step "
                                 "of the window (trainer/idle_fraction) and the buffer ended each of them empty")

    def validate(self, num_makers: int, key: str = "maker.autoscale") -> None:
        if not 1 <= self.min <= self.max:
            _fail(f"{key}", f"needs 1 <= min <= max, got min={self.min} max={self.max}", "e.g. {min: 1, max: 4}")
        if self.window < 1:
            _fail(f"{key}.window", f"must be >= 1, got {self.window}", "e.g. 3 (steps)")
        if not 0 < self.idle_above < 1:
            _fail(f"{key}.idle_above", f"must be in (0, 1), got {self.idle_above}", "e.g. 0.2")
        if not self.min <= num_makers <= self.max:
            _fail("maker.num_makers", f"{num_makers} is outside maker.autoscale's [{self.min}, {self.max}]",
                  "the pool starts with maker.num_makers makers: set it between min and max")


@dataclass
class MakerConfig:
    """Experience makers: each holds actor, initial, reward and critic models."""

    num_makers: int = opt(2, "experience-maker actors (independent of the trainer groups)")
    batch_size: int = opt(4, "samples per maker batch (one buffer item): batch_size / algorithm.n_samples_per_prompt "
                             "prompts, each sampled n times")
    num_cpus: float = opt(0.5, "CPUs per maker")
    num_gpus: float = opt(0.0, "GPUs per maker (fractions colocate with trainers)")
    resources: dict[str, float] = opt({}, "custom Ray resources per maker, e.g. {inference: 1}, to place makers only on nodes "
                              "started with `ray start --resources='{\"inference\": 8}'`")
    torch_threads: Optional[int] = opt(1, "torch threads per maker")
    cpu_cores: Optional[list[int]] = opt(None, "pin every thread of each maker to these cores of its node, e.g. [0] "
                                               "(Linux affinity; None: the OS schedules); see resources.cpu_cores")
    nice: int = opt(0, "Linux nice value of every thread of each maker (0-19; 0: unchanged); see resources.nice")
    max_restarts: int = opt(3, "Ray restarts of a dead maker")
    on_exhausted_restarts: Literal["fail", "drop"] = opt(
        "fail", "a maker dead past max_restarts: fail ends the run; drop takes it out of the pool and the run goes "
                "on with the others (its batches are made by them)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = opt(
        "auto", "inference dtype of every maker model; auto: what each trainer group computes in (its "
                "precision on zero2/gemini, else its model.dtype) and reward_model.dtype for the reward model")
    start_timeout_s: float = opt(120.0, "a maker not scheduled and ready within this many seconds ends the run "
                                        "with one line (under maker.autoscale: is let go, and the pool stays as it "
                                        "is; on a cluster that adds nodes, allow for a node's start)")
    autoscale: Optional[AutoscaleConfig] = opt(None, "size the pool by itself between min and max (null: "
                                                     "maker.num_makers, changed only by RLJob.scale_makers)")

    def validate(self, key: str = "maker") -> None:
        if self.num_makers < 1:
            _fail(f"{key}.num_makers", f"must be >= 1, got {self.num_makers}", "PPO needs at least one maker")
        if self.batch_size < 1:
            _fail(f"{key}.batch_size", f"must be >= 1, got {self.batch_size}", "e.g. 4")
        check_cpu_cores(self.cpu_cores, f"{key}.cpu_cores")
        check_nice(self.nice, f"{key}.nice")
        if self.autoscale is not None:
            self.autoscale.validate(self.num_makers, f"{key}.autoscale")
        for name, amount in self.resources.items():
            if name in ("CPU", "GPU", "memory") or not isinstance(amount, (int, float)) or amount <= 0:
                _fail(f"{key}.resources", f"{name}: {amount!r} is not a custom resource amount > 0",
                      "name resources your nodes were started with (--resources), e.g. {inference: 1}; CPUs and "
                      "GPUs go in maker.num_cpus / maker.num_gpus")


@dataclass
class BufferConfig:
    """The replay-buffer actor between makers and trainers."""

    capacity: int = opt(64, "samples held at most (>= one rollout batch); async makers run ahead no further")
    timeout_s: float = opt(600.0, "a producer or consumer waiting longer than this fails with a clear error")


@dataclass
class SyncConfig:
    """How the trainers' new weights reach the makers after every update (actors/weight_sync.py)."""

    transport: str = opt(
        "auto", "object_store: put once, every maker pulls; collective: a torch.distributed broadcast from each "
                "trainer group's rank 0 to every maker; ipc (sync mode): makers on the trainers' node map their "
                "tensors (shared memory / CUDA IPC), others through the object store; auto: ipc where it reaches "
                "every maker, else collective when the group forms, else object_store; or 'module:Class' of "
                "your own (a WeightTransport, actors/transports/, docs/extending.md)")
    backend: Literal["auto", "gloo", "nccl"] = opt("auto", "collective backend; auto: nccl when the senders and "
                                                           "every maker have a GPU, else gloo")
    bucket_mb: float = opt(256.0, "collective: megabytes per broadcast bucket (the extra transport memory per side)")
    timeout_s: float = opt(120.0, "a collective sync (or its group forming) that does not finish in time ends "
                                  "the run with one line naming the peer that did not join")

    def validate(self, key: str = "weight_sync") -> None:
        from coati_ray.seams import TRANSPORTS

        TRANSPORTS.check(self.transport, f"{key}.transport")  # the driver checks the class, before Ray starts
        if self.bucket_mb <= 0:
            _fail(f"{key}.bucket_mb", f"must be > 0, got {self.bucket_mb}", "e.g. 256")
        if self.timeout_s <= 0:
            _fail(f"{key}.timeout_s", f"must be > 0, got {self.timeout_s}", "e.g. 120")


@dataclass
class ColocatedConfig:
    """placement: colocated's memory: the trainer ranks that generate (coati_ray/strategies/offload.py)."""

    offload_optimizer: bool = opt(False, "move each trainer group's optimizer state (Adam's moments, ZeRO-2's fp32 "
                                         "master shards) to pinned host memory after every update and back before "
                                         "the next, so generation has that GPU memory; costs two copies per step; "
                                         "nothing moves on a CPU")


@dataclass
class WatchdogConfig:
    """A PPO step that makes no progress (no maker batch lands, no trainer rank or weight load finishes) for
    this long ends the run with one line naming the Ray actors that do not respond and what they run."""

    stall_s: Optional[float] = opt(None, "seconds without progress that end the run; null: derived, "
                                         "max(min_stall_s, factor x the slowest of the last 10 steps)")
    min_stall_s: float = opt(900.0, "the derived bound's floor (and the bound of a run's first step)")
    factor: float = opt(10.0, "the derived bound in multiples of the slowest recent step")
    stacks: bool = opt(True, "write the Python stacks of the Ray actors that do not respond to <run>/stall/ "
                             "(py-spy, which ray[default] installs; those on the driver's node)")

    def validate(self, key: str = "watchdog") -> None:
        if self.stall_s is not None and self.stall_s <= 0:
            _fail(f"{key}.stall_s", f"must be > 0, got {self.stall_s}", "e.g. 600, or null to derive it")
        if self.min_stall_s <= 0 or self.factor < 1:
            _fail(f"{key}.min_stall_s", f"min_stall_s must be > 0 and factor >= 1, got {self.min_stall_s} and "
                  f"{self.factor}", "e.g. min_stall_s=900 factor=10")
