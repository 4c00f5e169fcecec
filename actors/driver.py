"""The PPO job: builds the actor groups, runs the steps, syncs weights, checkpoints, cleans up.

    job = PPOJob(cfg)            # validates config and data before touching Ray
    summary = job.run()          # starts Ray actors, trains, always releases actors and placement groups
    job.scale_makers(3)          # from a callback or another thread: takes effect at the next step

sync mode: each step's experience is generated with the weights after the previous update.
async mode: makers keep generating while trainers train; the buffer drops experience that is more
than ppo.max_staleness versions old when a trainer group first asks for it.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from typing import Callable, Optional

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.cluster import NAMESPACE, connect
from actors.evaluator import PolicyEvaluator
from actors.group import get_or_fail_fast, user_errors
from actors.maker_pool import MakerPool
from actors.ppo_trainer import PPOTrainerRank
from actors.replay_buffer import ReplayBuffer
from coati_ray.config import save_config, to_dict
from coati_ray.errors import ConfigError, WorkerLost
from coati_ray.utils.flops import tflops
from coati_ray.utils.run_dir import COMPLETE_MARKER, RunLogger, checkpoint_dir, prune_checkpoints, truncate_metrics

ROLES = ("actor", "critic")
PROGRESS_KEYS = ("reward", "kl", "actor/loss", "critic/loss", "actor/clip_frac", "response_length",
                 "throughput/samples_per_s", "timing/step", "makers", "buffer/held_samples")


class PPOJob:
    def __init__(self, cfg, resume_from: Optional[str] = None, ray_address: Optional[str] = None,
                 log: bool = True):
        from coati_ray.experience.prompts import PromptStream, read_prompt_data
        from coati_ray.models.loading import check_tokenizer_fits, load_tokenizer

        self.cfg, self.resume_from, self.ray_address = cfg, resume_from, ray_address
        self.cfg_dict = to_dict(cfg)
        # Everything the user can get wrong in the data is read here, before any Ray resource.
        tokenizer = load_tokenizer(cfg.actor.tokenizer_path or cfg.actor.path, cfg.actor.trust_remote_code)
        for key in ("actor", "critic", "reward"):
            check_tokenizer_fits(tokenizer, getattr(cfg, key).path, f"{key}.path")
        prompts, self.prompt_report, eval_items = read_prompt_data(cfg.data, tokenizer)
        self.step, self.version = 0, 0
        position = 0
        if resume_from:
            with open(os.path.join(resume_from, "driver_state.json")) as f:
                state = json.load(f)
            self.step, self.version, position = state["step"], state["version"], state["prompt_position"]
        self.prompts = PromptStream(prompts, cfg.maker.batch_size, cfg.ppo.seed, position)
        self.items_per_step = cfg.ppo.rollout_batch_size // cfg.maker.batch_size
        self.logger = RunLogger(cfg.output_dir, enabled=log, stage="ppo", log_every=cfg.ppo.log_every,
                                show=PROGRESS_KEYS)
        self.evaluator = PolicyEvaluator(eval_items, cfg.ppo.eval_greedy, cfg.ppo.seed,
                                         cfg.ppo.eval_samples_per_prompt, self.logger)
        self.pool: Optional[MakerPool] = None
        self.target_makers = cfg.maker.num_makers
        self.lock = threading.Lock()
        self.groups: dict[str, list] = {}
        self.pgs: list = []
        self.buffer = None
        self.step_makes: list[dict] = []  # maker statistics gathered during the current step
        self.started_ray = False
        self._metrics = None

    @property
    def metrics(self):
        """The driver's own `coati_*` series (role=driver); created once Ray is connected."""
        if self._metrics is None:
            from actors.metrics import ActorMetrics

            self._metrics = ActorMetrics("driver", 0)
        return self._metrics

    # ------------------------------------------------------------------ public API

    def scale_makers(self, n: int) -> None:
        """Ask for `n` makers; applied at the start of the next step without stopping the trainers."""
        if n < 1:
            raise ConfigError(f"config error: scale_makers({n}): at least one maker is needed")
        with self.lock:
            self.target_makers = n

    @property
    def num_makers(self) -> int:
        return len(self.pool) if self.pool else 0

    @property
    def makers(self) -> dict:
        """Maker actor handles by index (read-only view, for callbacks and tests)."""
        return dict(self.pool.makers) if self.pool else {}

    def run(self, on_step: Optional[Callable[["PPOJob", int, dict], None]] = None) -> dict:
        t_start = time.time()
        try:
            with user_errors():
                return self._run(on_step, t_start)
        finally:
            self.shutdown()

    def _run(self, on_step, t_start: float) -> dict:
        if self.logger.enabled:  # `--config <run>/config.yaml` reproduces the run, for scripts too
            save_config(self.cfg, os.path.join(self.cfg.output_dir, "config.yaml"))
        self.start()
        if not self.resume_from:
            self._evaluate(block=True)  # the policy before PPO
        history = []
        sync = self.cfg.ppo.mode == "sync"
        while self.step < self.cfg.ppo.max_steps:
            metrics = self.train_step()
            history.append(metrics)
            self.logger.log(self.step, self.cfg.ppo.max_steps, _scalars(metrics))
            if on_step is not None:
                on_step(self, self.step, metrics)
            every = self.cfg.ppo.save_every
            if every and self.step % every == 0 and self.step < self.cfg.ppo.max_steps:
                self.save_checkpoint()
            every = self.cfg.ppo.eval_every
            if every and self.step % every == 0 and self.step < self.cfg.ppo.max_steps:
                self._evaluate(block=sync)
            self.evaluator.collect(block=False)
        self.save_checkpoint(final=True)
        accounting = ray.get(self.buffer.close.remote())
        self._drain()  # makers now hold the final weights and nothing is in flight
        self.evaluator.collect(block=True)
        if self.evaluator.last_version() != self.version:
            self._evaluate(block=True)
        summary = self._summary(history, accounting, time.time() - t_start)
        self.logger.write_summary(summary)
        return summary

    # ------------------------------------------------------------------ start-up

    def start(self) -> None:
        self.started_ray = connect(self.ray_address)
        self._check_resources()
        cfg = self.cfg
        max_staleness = cfg.ppo.max_staleness if cfg.ppo.mode == "async" else 0
        self.buffer = ReplayBuffer.options(name="replay-buffer", namespace=NAMESPACE).remote(
            cfg.buffer.capacity, {r: self._group_cfg(r).resources.num_ranks for r in ROLES}, max_staleness,
            cfg.buffer.timeout_s)
        ray.get(self.buffer.set_version.remote(self.version))
        self.pool = MakerPool(cfg, self.cfg_dict, self.buffer, self.prompts.next_batch, self._lora_only,
                              self.logger.info)
        for role in ROLES:
            self._start_group(role)
        self._trainers([ref for role in ROLES for ref in self._setup_group(role)])  # both groups at once
        if self.resume_from:
            self.logger.info(f"resumed from {self.resume_from} at step {self.step}")
            truncate_metrics(cfg.output_dir, self.step)
            self.evaluator.restore(self.step)
            self._export_weights()
        self._apply_scaling()
        self.pool.ready()
        self.pool.wait_loads()
        self.logger.info(f"{len(self.pool)} makers, actor group {len(self.groups['actor'])} rank(s) "
                         f"[{cfg.actor_trainer.strategy.name}], critic group {len(self.groups['critic'])} rank(s) "
                         f"[{cfg.critic_trainer.strategy.name}], mode={cfg.ppo.mode}, {len(self.prompts.items)} prompts")

    def _group_cfg(self, role: str):
        return self.cfg.actor_trainer if role == "actor" else self.cfg.critic_trainer

    def _check_resources(self) -> None:
        check_cluster_fits(self.cfg)

    def _start_group(self, role: str) -> None:
        g = self._group_cfg(role)
        r = g.resources
        bundle = {"CPU": r.num_cpus_per_rank, **({"GPU": r.num_gpus_per_rank} if r.num_gpus_per_rank else {})}
        pg = placement_group([dict(bundle) for _ in range(r.num_ranks)], strategy="PACK", name=f"{role}-trainer-pg")
        self.pgs.append(pg)
        ready, _ = ray.wait([pg.ready()], timeout=120)
        if not ready:
            raise RuntimeError(f"the cluster could not place {r.num_ranks} x {bundle} for the {role} trainer group")
        self.groups[role] = [
            PPOTrainerRank.options(name=f"{role}-trainer-{rank}", namespace=NAMESPACE, num_cpus=r.num_cpus_per_rank,
                                   num_gpus=r.num_gpus_per_rank,
                                   scheduling_strategy=PlacementGroupSchedulingStrategy(pg, rank)).remote(
                role, self.cfg_dict, rank, r.num_ranks, r.torch_threads or 1)
            for rank in range(r.num_ranks)]

    def _setup_group(self, role: str) -> list:
        ranks = self.groups[role]
        addr, port = ray.get(ranks[0].address.remote())
        return [rank.setup.remote(addr, port, self.resume_from) for rank in ranks]

    # ------------------------------------------------------------------ makers

    def _apply_scaling(self) -> None:
        with self.lock:
            target = self.target_makers
        self.pool.scale_to(target)

    @property
    def _lora_only(self) -> bool:
        return self.cfg.actor.lora_rank > 0

    def _record_make(self, stats: Optional[dict]) -> None:
        if stats is not None and stats.get("accepted", True):  # a refused copy produced nothing new
            self.step_makes.append(stats)

    def _trainers(self, refs: list) -> list:
        """ray.get on trainer refs, failing fast; a dead rank ends the run with one line on how to resume."""
        try:
            return get_or_fail_fast(refs)
        except ray.exceptions.RayActorError as e:
            raise WorkerLost(self._trainer_lost(e)) from None
        except ray.exceptions.RayTaskError as e:
            # A peer of a dead rank may fail first (its collective lost a member): name the dead one.
            if any(_is_dead(handle) for _, handle in self._trainer_names()):
                raise WorkerLost(self._trainer_lost(e)) from None
            raise

    def _trainer_lost(self, err: BaseException) -> str:
        from coati_ray.utils.run_dir import latest_checkpoint

        dead = [name for name, handle in self._trainer_names()
                if _is_dead(handle)] or ["a trainer rank"]
        ckpt = latest_checkpoint(self.cfg.output_dir)
        how = (f"resume with --resume (latest checkpoint: {ckpt})" if ckpt else
               "no checkpoint was saved yet (set ppo.save_every), so rerun from the start")
        return (f"run error: {', '.join(dead)} died at step {self.step + 1} ({type(err).__name__}); a trainer group "
                f"cannot lose a rank, so the run stops; {how}")

    def _trainer_names(self):
        for role, ranks in self.groups.items():
            for rank, handle in enumerate(ranks):
                yield f"{role}-trainer-{rank}", handle

    # ------------------------------------------------------------------ one step

    def train_step(self) -> dict:
        cfg = self.cfg
        t0 = time.perf_counter()
        self._apply_scaling()
        self.step_makes = []
        if cfg.ppo.mode == "sync":
            self.pool.wait_loads()  # e.g. a maker added this step: on-policy from its first batch
        step = self.step
        train_refs = {role: [r.train_step.remote(self.buffer, self.items_per_step, step) for r in ranks]
                      for role, ranks in self.groups.items()}
        all_train = [ref for refs in train_refs.values() for ref in refs]
        t_gen = time.perf_counter()
        if cfg.ppo.mode == "sync":
            for stats in self.pool.make_batches(self.items_per_step):
                self._record_make(stats)
            generate_wall = time.perf_counter() - t_gen
            results = self._trainers(all_train)
        else:
            generate_wall = None
            self.pool.fill()
            remaining = set(all_train)
            while remaining:
                makers = self.pool.refs()
                done, _ = ray.wait(list(remaining) + list(makers), num_returns=1)
                ref = done[0]
                if ref in remaining:
                    self._trainers([ref])  # raises at once if a trainer rank failed
                    remaining.discard(ref)
                else:
                    self._record_make(self.pool.landed(ref))  # and the maker goes on with its next batch
            results = self._trainers(all_train)
        t_train_end = time.perf_counter()
        self.step += 1
        self.version += 1
        ray.get(self.buffer.set_version.remote(self.version))
        sync = self._export_weights()
        if cfg.ppo.mode == "sync":
            load_results = self.pool.wait_loads()
        else:
            # A maker blocked on a full buffer runs its queued load only after its batch lands, so
            # async mode never waits on loads: it reports the ones that have finished.
            load_results = self.pool.finished_loads()
        metrics = self._step_metrics(results, train_refs, sync, load_results, time.perf_counter() - t0,
                                     t_train_end - t0, generate_wall)
        return metrics

    def _evaluate(self, block: bool) -> None:
        if self.pool.first() is not None:
            self.evaluator.submit(self.pool.first(), block)

    def _export_weights(self) -> dict:
        """Trainer rank 0 of each group puts its weights once; every maker is told to load them."""
        t = time.perf_counter()
        actor_out = self._trainers([r.export_weights.remote(self._lora_only) for r in self.groups["actor"]])[0]
        critic_out = self._trainers([r.export_weights.remote(False) for r in self.groups["critic"]])[0]
        self.pool.broadcast((actor_out, critic_out, self.version))
        return {"export_seconds": time.perf_counter() - t}

    def _step_metrics(self, results, train_refs, sync, loads, step_s, train_s, generate_wall) -> dict:
        n_actor = len(train_refs["actor"])
        actor, critic = results[0], results[n_actor]
        makes = self.step_makes
        m = {k: v for k, v in {**actor, **critic}.items() if k != "consumed" and not k.startswith("flops/")}
        # Each group's estimated FLOPs over the step's wall time: the three add up to the job's rate.
        m["tflops/actor_trainer"] = tflops(actor["flops/actor"], step_s)
        m["tflops/critic_trainer"] = tflops(critic["flops/critic"], step_s)
        if makes:
            for key in ("reward", "kl", "response_length", "timing/generate", "timing/ref", "timing/reward",
                        "timing/values"):
                m[key] = sum(s[key] for s in makes) / len(makes)
            tokens = sum(s["generated_tokens"] for s in makes)
            samples = sum(s["samples"] for s in makes)
            m["throughput/samples_per_s"] = samples / max(step_s, 1e-9)
            m["tflops/makers"] = tflops(sum(s["flops"] for s in makes), step_s)
            m["throughput/generated_tokens_per_s"] = tokens / max(step_s, 1e-9)
            m["experience/batches"] = len(makes)
        else:  # async: no maker batch finished during this step, so nothing was produced in it
            m.update({"throughput/samples_per_s": 0.0, "throughput/generated_tokens_per_s": 0.0,
                      "tflops/makers": 0.0, "experience/batches": 0, "timing/generate": 0.0, "timing/ref": 0.0,
                      "timing/reward": 0.0, "timing/values": 0.0})
        consumed = actor["consumed"]
        m["experience/max_staleness"] = max(consumed["staleness"]) if consumed["staleness"] else 0
        m["experience/versions"] = consumed["versions"]
        m["timing/sync"] = sync["export_seconds"] + (max(x["seconds"] for x in loads) if loads else 0.0)
        m["sync/bytes"] = loads[0]["bytes"] if loads else 0
        m["timing/step"] = step_s
        m["throughput/trainer_tokens_per_s"] = (m.get("throughput/actor_tokens_per_s", 0.0)
                                                 + m.get("throughput/critic_tokens_per_s", 0.0))
        self.metrics.stages({"timing/step": step_s, "timing/sync": m["timing/sync"]})
        self.metrics.set("weight_sync_bytes", m["sync/bytes"])
        m["version"] = self.version
        m["makers"] = len(self.pool)
        m["maker_restarts"] = self.pool.restarts
        stats = ray.get(self.buffer.stats.remote())
        m["buffer/held_samples"] = stats["held_samples"]
        m["buffer/capacity"] = stats["capacity"]
        m["buffer/dropped"] = stats["dropped"]
        m["consumed"] = {role: results[0 if role == "actor" else n_actor]["consumed"] for role in ROLES}
        return m

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, final: bool = False) -> str:
        """checkpoints/step_N (or final): actor/ and critic/ (HF model + optimizer), driver_state.json."""
        root = os.path.join(self.cfg.output_dir, "checkpoints")
        path = os.path.join(root, "final") if final else checkpoint_dir(self.cfg.output_dir, self.step)
        tmp = path + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        self._trainers([r.save_checkpoint.remote(tmp, final) for ranks in self.groups.values() for r in ranks])
        with open(os.path.join(tmp, "driver_state.json"), "w") as f:
            json.dump({"step": self.step, "version": self.version, "prompt_position": self.prompts.position}, f)
        with open(os.path.join(tmp, COMPLETE_MARKER), "w") as f:
            json.dump({"step": self.step, "stage": "ppo"}, f)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
        if not final:
            prune_checkpoints(self.cfg.output_dir, 2)
        self.logger.info(f"checkpoint: {path}")
        return path

    # ------------------------------------------------------------------ shutdown

    def _drain(self) -> None:
        self.pool.drain()

    def shutdown(self) -> None:
        """Kill every actor and remove every placement group this job created; stop Ray if we started it."""
        if self.pool is not None:
            self.pool.kill_all()
        for ranks in self.groups.values():
            for r in ranks:
                ray.kill(r, no_restart=True)
        self.groups.clear()
        if self.buffer is not None:
            ray.kill(self.buffer, no_restart=True)
            self.buffer = None
        for pg in self.pgs:
            remove_placement_group(pg)
        self.pgs.clear()
        if self.started_ray:
            ray.shutdown()
            self.started_ray = False

    def _summary(self, history: list[dict], accounting: dict, wall: float) -> dict:
        last = history[-1] if history else {}
        first = history[0] if history else {}
        return {"stage": "ppo", "steps": self.step, "mode": self.cfg.ppo.mode, "makers": len(self.pool),
                "maker_restarts": self.pool.restarts, "maker_batches_regenerated": self.pool.regenerated,
                "reward_first": first.get("reward"), "reward_last": last.get("reward"), "kl_last": last.get("kl"),
                "actor_loss_last": last.get("actor/loss"), "critic_loss_last": last.get("critic/loss"),
                "wall_seconds": wall, "buffer": accounting, **self.evaluator.summary(),
                "final_checkpoint": os.path.join(self.cfg.output_dir, "checkpoints", "final")}


def ppo_resources(cfg) -> tuple[float, float]:
    """(CPUs, GPUs) a PPO job reserves: its makers and both trainer groups."""
    cpus, gpus = cfg.maker.num_makers * cfg.maker.num_cpus, cfg.maker.num_makers * cfg.maker.num_gpus
    for group in (cfg.actor_trainer, cfg.critic_trainer):
        cpus += group.resources.num_ranks * group.resources.num_cpus_per_rank
        gpus += group.resources.num_ranks * group.resources.num_gpus_per_rank
    return cpus, gpus


def check_cluster_fits(cfg, extra: str = "") -> None:
    """Refuse a PPO config the connected cluster cannot host, before any actor starts."""
    need_cpu, need_gpu = ppo_resources(cfg)
    have = ray.cluster_resources()
    if need_cpu > have.get("CPU", 0) + 1e-9 or need_gpu > have.get("GPU", 0) + 1e-9:
        raise ConfigError(f"config error: the job asks for {need_cpu:g} CPUs and {need_gpu:g} GPUs but the Ray "
                          f"cluster has {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs; lower "
                          f"{extra}maker.num_makers / num_cpus / num_gpus or the group sizes")


def _is_dead(handle) -> bool:
    try:
        ray.get(handle.__ray_ready__.remote(), timeout=5)
        return False
    except ray.exceptions.RayActorError:
        return True
    except ray.exceptions.GetTimeoutError:  # alive but busy (e.g. blocked in a collective)
        return False


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
