"""The PPO job: builds the actor groups, runs the steps, syncs weights, checkpoints, cleans up.

    job = RLJob(cfg)            # validates config and data before touching Ray
    summary = job.run()          # starts Ray actors, trains, always releases actors and placement groups
    job.scale_makers(3)          # from a callback or another thread: takes effect at the next step

One step reads top to bottom in `train_step`: scale the makers, generate and train (the experience
source: under placement: separate the scheduler feeds the makers admissible tickets while the trainer
groups update; under colocated the actor group's ranks generate, actors/colocated.py), publish the new
weights where generation happens next, and turn what everyone reported into one metrics record. sync mode: each step's experience
is generated with the weights after the previous update. async mode: makers keep generating while
trainers train, never further ahead than algorithm.max_staleness versions (actors/scheduling.py).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Callable, Optional

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.cluster import NAMESPACE, check_cluster_fits, check_output_on_every_node, check_shared_output, connect
from actors.evaluator import PolicyEvaluator
from actors.group import user_errors
from actors.experience_source import ExperienceSource, check_source, experience_source
from actors.replay_buffer import ReplayBuffer
from actors.trainer_restart import restart_after
from actors.ppo_trainer_groups import PPOTrainerGroups
from actors.watchdog import Watchdog
from coati_ray.config import save_config, to_dict
from coati_ray.errors import ConfigError, MakerUnplaced, TrainerLost
from coati_ray.reporting.step_metrics import step_metrics
from coati_ray.utils.redact import redact_config
from coati_ray.storage.checkpoint import Checkpoint
from coati_ray.storage.fs import read_text
from coati_ray.storage.uri import join, redact
from coati_ray.utils.run_dir import (COMPLETE_MARKER, RunLogger, check_run_dir, checkpoint_dir, clear_run_dir,
                                    prune_checkpoints)

PROGRESS_KEYS = ("reward", "kl", "actor/loss", "critic/loss", "actor/clip_frac", "response_length",
                 "throughput/samples_per_s", "timing/step", "makers", "buffer/held_samples")


class RLJob:
    def __init__(self, cfg, resume_from: Optional[str] = None, ray_address: Optional[str] = None,
                 log: bool = True, overwrite: bool = False):
        """`overwrite`: replace an earlier run's results in cfg.output_dir (refused otherwise, unless resuming)."""
        from coati_ray.experience.prompts import read_prompt_data
        from coati_ray.experience.reward_sources import check_reward_sources
        from coati_ray.models.loading import check_tokenizer_fits, tokenizer_for

        self.cfg, self.resume_from, self.ray_address = cfg, resume_from, ray_address
        check_run_dir(cfg.output_dir, resume=resume_from is not None, overwrite=overwrite)
        self.overwrite = overwrite
        self.cfg_dict = to_dict(cfg)
        self.roles = cfg.roles  # ("actor", "critic") for gae, ("actor",) for a critic-free estimator
        # Everything the user can get wrong in the data is read here, before any Ray resource.
        tokenizer = tokenizer_for(cfg.actor, cfg.data)
        for key in ("actor", "critic", "reward_model"):
            if getattr(cfg, key) is not None:
                check_tokenizer_fits(tokenizer, getattr(cfg, key).local_path, f"{key}.path")
        check_reward_sources(cfg.rewards)
        self.placement = cfg.placement_spec
        check_source(self.placement)  # one of your own: an ExperienceSource, before Ray starts
        if self.placement.makers:
            from actors.transports import check_transport

            check_transport(cfg.weight_sync.transport)  # one of your own: a WeightTransport, before Ray starts
        if cfg.rollout.multi_turn:
            from coati_ray.experience.episodes import check_tool_turns

            check_tool_turns(tokenizer)
        prompts, self.prompt_report, eval_items = read_prompt_data(cfg.data, tokenizer)
        self.step, self.version = 0, 0
        if resume_from:  # a local directory or a URI (read where it is: one small file)
            state = json.loads(read_text(join(resume_from, "driver_state.json")))
            self.step, self.version = state["step"], state["version"]
        self.items_per_step = cfg.algorithm.rollout_batch_size // cfg.maker.batch_size
        # Batch b holds stream positions b*batch_size...; step s trains on batches [s*k, (s+1)*k), so a
        # resumed run remakes exactly the batches the interrupted one had not trained on.
        self.prompt_items = prompts
        self.prompts = self._prompt_stream()
        self.first_step = self.step  # where this process started (history counts from it)
        # where a trainer restart goes back to: the checkpoint this run started from, then each one it completes
        # (not the newest in output_dir: a run resumed from an older or another run's checkpoint goes back to its own)
        self.restart_point: tuple[Optional[str], int, int] = (resume_from, self.step, self.version)
        self.restarts_by_group = {role: 0 for role in self.roles}  # trainer restarts charged to each group
        self.trainer_restarts: list[dict] = []
        self.logger = RunLogger(cfg.output_dir, enabled=log, stage="ppo", log_every=cfg.algorithm.log_every,
                                wandb=cfg.logging.wandb, config=redact_config(self.cfg_dict),
                                show=PROGRESS_KEYS)
        self.evaluator = PolicyEvaluator(eval_items, cfg.algorithm.eval_greedy, cfg.algorithm.seed,
                                         cfg.algorithm.eval_samples_per_prompt, self.logger)
        self.source: Optional[ExperienceSource] = None  # makers (placement: separate) or the actor group's ranks
        self.trainers: Optional[PPOTrainerGroups] = None
        self.max_staleness = cfg.algorithm.max_staleness if cfg.algorithm.mode == "async" else 0
        self.watchdog: Optional[Watchdog] = None
        self.target_makers = cfg.maker.num_makers
        self.autoscaler = None  # maker.autoscale: the pool sizes itself (coati_ray/autoscale.py)
        if cfg.maker.autoscale is not None and self.placement.makers:
            from coati_ray.autoscale import Autoscaler, Rule

            self.autoscaler = Autoscaler(Rule.of(cfg.maker.autoscale, cfg.algorithm.rollout_batch_size,
                                                 self.items_per_step, self.max_staleness))
        self.lock = threading.Lock()
        self.buffer = None
        self.started_ray = False
        self._metrics = None

    @property
    def metrics(self):
        """The driver's own `coati_*` series (role=driver); created once Ray is connected."""
        if self._metrics is None:
            from actors.metrics import WorkerMetrics

            self._metrics = WorkerMetrics("driver", 0)
        return self._metrics

    # ------------------------------------------------------------------ public API

    def scale_makers(self, n: int) -> None:
        """Ask for `n` makers; applied at the start of the next step (the trainer groups keep their state;
        the step starts once added makers have loaded). Refused at once (ConfigError) when the cluster has
        not got the free resources for them."""
        if n < 1:
            raise ConfigError(f"config error: scale_makers({n}): at least one maker is needed")
        if not self.placement.makers:
            raise ConfigError(f"config error: scale_makers({n}): placement: {self.cfg.placement} has no makers; "
                              "scale makers under a placement that has them (placement: separate)")
        if self.source is not None:
            self.source.check_fits(n)
        with self.lock:
            self.target_makers = n

    @property
    def num_makers(self) -> int:
        return self.source.num_makers if self.source else 0

    @property
    def makers(self) -> dict:
        """Maker actor handles by index (read-only view, for callbacks and tests)."""
        return dict(self.pool.makers) if self.pool else {}

    @property
    def pool(self):
        """The MakerPool (placement: separate), else None."""
        return getattr(self.source, "pool", None)

    @property
    def sync(self):
        """The WeightSync (placement: separate), else None."""
        return getattr(self.source, "sync", None)

    @property
    def scheduler(self):
        return getattr(self.source, "scheduler", None)

    @property
    def groups(self) -> dict:
        """Trainer rank handles by role (read-only view, for callbacks and tests)."""
        return dict(self.trainers.ranks) if self.trainers else {}

    def run(self, on_step: Optional[Callable[["RLJob", int, dict], None]] = None) -> dict:
        t_start = time.time()
        try:
            with user_errors():
                return self._run(on_step, t_start)
        finally:
            try:
                self.logger.discard()  # a remote run directory: what was written is uploaded, the mirror removed
            finally:
                self.shutdown()

    def _run(self, on_step, t_start: float) -> dict:
        p = self.cfg.algorithm
        if self.overwrite and not self.resume_from:
            clear_run_dir(self.cfg.output_dir)
        if self.logger.enabled:  # `--config <run>/config.yaml` reproduces the run, for scripts too
            save_config(self.cfg, join(self.cfg.output_dir, "config.yaml"))
        self.start()
        if not self.resume_from:
            self._evaluate(block=True)  # the policy before PPO
        history = []
        while True:
            try:
                while self.step < p.max_steps:
                    history.append(self._advance(on_step))
                self.save_checkpoint(final=True)
                break
            except TrainerLost as lost:  # back to the last checkpoint, or the run's one line
                restart_after(self, lost)
                del history[max(0, self.step - self.first_step):]
        accounting = ray.get(self.buffer.close.remote())
        self.source.finish()  # nothing in flight; every generating worker holds the final weights
        self.evaluator.collect(block=True)
        if self.evaluator.last_version() != self.version:
            self._evaluate(block=True)
        summary = self._summary(history, accounting, time.time() - t_start)
        self.logger.write_summary(summary)
        return summary

    def _prompt_stream(self):
        from coati_ray.experience.prompts import PromptStream

        cfg = self.cfg
        return PromptStream(self.prompt_items, cfg.prompts_per_batch, cfg.algorithm.seed,
                            self.step * self.items_per_step,
                            spare_rounds=cfg.algorithm.max_sampling_rounds - 1 if cfg.algorithm.filter_groups else 0)

    def _advance(self, on_step) -> dict:
        """One step, then its checkpoint and evaluation when due."""
        p = self.cfg.algorithm
        metrics = self.train_step()
        if self.autoscaler is not None:  # the next step's pool, from this one's signals
            self._autoscale(metrics)
        self.logger.log(self.step, p.max_steps, _scalars(metrics))
        if on_step is not None:
            on_step(self, self.step, metrics)
        if p.save_every and self.step % p.save_every == 0 and self.step < p.max_steps:
            self.save_checkpoint()
        if p.eval_every and self.step % p.eval_every == 0 and self.step < p.max_steps:
            self._evaluate(block=p.mode == "sync")
        self.evaluator.collect(block=False)
        return metrics

    # ------------------------------------------------------------------ start-up

    def start(self) -> None:
        cfg = self.cfg
        self.started_ray = connect(self.ray_address, dashboard=cfg.ray.dashboard, dashboard_port=cfg.ray.dashboard_port,
                                   info=self.logger.info)
        check_cluster_fits(cfg)
        check_output_on_every_node(cfg.output_dir)  # before any actor: every node sees (or can write) output_dir
        self._start_actors()

    def _start_actors(self, keep_source: bool = False) -> None:
        """Trainer groups, replay buffer, experience source, watchdog; from `resume_from` when set. `keep_source`:
        a trainer restart kept the source's workers (makers), which rejoin the new groups."""
        cfg = self.cfg
        self.trainers = PPOTrainerGroups(cfg, self.cfg_dict, self.roles)
        self.trainers.step = self.step  # a rank lost before the first update is named at the right step
        # On the driver's node: it lives exactly as long as the job's driver, whichever node is lost.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.buffer = ReplayBuffer.options(name="replay-buffer", namespace=NAMESPACE, scheduling_strategy=here).remote(
            cfg.buffer.capacity, {role: self.trainers.group_cfg(role).resources.num_ranks for role in self.roles},
            self.items_per_step, self.step, self.max_staleness, cfg.buffer.timeout_s)
        ray.get(self.buffer.set_version.remote(self.version))
        if not keep_source:
            self.source = experience_source(self)
        self.trainers.start()
        check_shared_output(dict(self.trainers.names()), cfg.output_dir)
        setup_trainers = lambda: self.trainers.setup(self.resume_from, first_step=self.step)  # noqa: E731
        if keep_source:
            self.source.rejoin(setup_trainers)
        else:
            self.source.start(setup_trainers)
        self.watchdog = Watchdog(cfg.watchdog, self.logger.run_dir, self.worker_handles, self.activity)
        self.watchdog.locate()
        self.source.attach(self.watchdog)
        if self.resume_from:
            self.logger.info(f"resumed from {self.resume_from} at step {self.step}")
            self.logger.continue_from(self.step)
            self.evaluator.restore(self.step)
        if self.resume_from or keep_source:  # kept makers hold newer weights than the initial ones: reload them
            self._sync_weights()
        self.logger.info((f"{self.num_makers} makers, " if self.placement.makers else f"{cfg.placement}, ") + ", ".join(
            f"{role} group {len(ranks)} rank(s) [{self.trainers.group_cfg(role).strategy.name}]"
            for role, ranks in self.trainers.ranks.items())
            + f", mode={cfg.algorithm.mode}, {len(self.prompts.items)} prompts")

    # ------------------------------------------------------------------ one step

    def train_step(self) -> dict:
        t0 = time.perf_counter()
        if self.placement.makers:
            self._scale()
        self.watchdog.begin_step(self.step)
        result = self.source.run(self.step)  # generate and update, overlapped as the mode allows
        self.step += 1
        self.version += 1
        ray.get(self.buffer.set_version.remote(self.version))
        sync = self._sync_weights()
        loads = self.source.collect_loads()
        step_s = time.perf_counter() - t0
        self.watchdog.end_step(step_s)
        if self.source.processes_changed():  # new processes (a maker restarted): ask their pids
            self.watchdog.locate()
        self.metrics.stages({"timing/step": step_s})
        buffer = ray.get(self.buffer.stats.remote())
        if buffer["over_staleness"]:  # admission control is what bounds staleness: never let a breach pass quietly
            raise RuntimeError(f"internal error: {buffer['over_staleness']} batch(es) reached the trainers more than "
                               f"algorithm.max_staleness versions old (staleness counts {buffer['staleness_counts']}); "
                               "please report this with the run's config.yaml")
        m = step_metrics(updates=result.results, makes=result.makes, sync=sync, loads=loads,
                         step_seconds=step_s, buffer=buffer, version=self.version,
                         makers=self.source.num_makers, maker_restarts=self.source.restarts)
        self.metrics.set("weight_sync_bytes", m["sync/bytes"])
        self.metrics.stages({"timing/sync": m["timing/sync"]})
        return m

    def _scale(self) -> None:
        with self.lock:  # makers dropped past their restarts are not replaced (on_exhausted_restarts=drop)
            self.target_makers = max(1, self.target_makers - self.source.take_dropped())
            target = self.target_makers
        before = self.num_makers
        try:
            self.source.scale_to(target)  # added makers load before the step (maker.start_timeout_s at most)
        except ConfigError as e:  # resources taken since scale_makers() checked them: keep the makers we have
            self.logger.info(f"{e}; keeping {self.num_makers} makers")
            with self.lock:
                self.target_makers = self.num_makers
        except MakerUnplaced as e:
            if self.autoscaler is None or target <= before:
                raise
            # autoscale asked for a maker the cluster did not place in time (no node came): let it go, wait longer
            self.logger.info(f"autoscale: {str(e).removeprefix('run error: ')}; keeping {before} makers")
            self.source.scale_to(before)
            self.autoscaler.unplaced()
            with self.lock:
                self.target_makers = before

    def _autoscale(self, m: dict) -> None:
        """maker.autoscale: one maker more when the trainers waited for experience through a window of steps,
        one fewer when the buffer held the next step through one (coati_ray/autoscale.py). Through the same path
        as scale_makers, without its free-resources check: on a cluster with Ray's autoscaler a maker that does not
        fit is what asks for a node, and an idle node is given back once its maker is gone."""
        from coati_ray.autoscale import StepSignal

        makers = self.num_makers
        target = self.autoscaler.observe(StepSignal(m["trainer/idle_fraction"], m["buffer/held_samples"]), makers)
        m["makers/autoscale_target"] = target
        if target != makers:
            self.logger.info(f"autoscale: {makers} -> {target} makers (trainers idle "
                             f"{m['trainer/idle_fraction']:.0%} of the step, {m['buffer/held_samples']} samples "
                             "held at its end)")
            with self.lock:
                self.target_makers = target

    def worker_handles(self) -> dict:
        """{name: handle} of every actor of the job (the watchdog pings them)."""
        out = self.source.handles()
        out.update(dict(self.trainers.names()))
        out["replay-buffer"] = self.buffer
        return out

    def activity(self) -> dict[str, str]:
        """{name: what the driver has asked that actor to do and not yet seen done}."""
        return {**self.source.activity(), **self.trainers.activity()}

    def _sync_weights(self) -> dict:
        """The new weights where generation happens next (separate: on their way to every maker, through
        actors/weight_sync.py; colocated: already there)."""
        return self.source.publish(self.version)

    def _evaluate(self, block: bool) -> None:
        target = self.source.evaluation_target()
        if target is not None:
            self.evaluator.submit(target, block)

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, final: bool = False) -> str:
        """checkpoints/step_N (or final): <role>/ (HF model, optimizer, RNG, trainer state), driver_state.json.

        Complete or absent: the ranks write their parts (remote: each uploads from its node), then the driver
        writes driver_state.json and the marker last (locally a .tmp renamed; remote, a manifest), so a run
        killed mid-save resumes from the checkpoint before."""
        target = join(self.cfg.output_dir, "checkpoints", "final") if final else \
            checkpoint_dir(self.cfg.output_dir, self.step)
        ckpt = Checkpoint(target)
        ckpt.begin()
        self.trainers.save(ckpt.path, final)
        self.logger.sync()  # the metrics up to this checkpoint, before it becomes the one to resume from
        ckpt.seal({"driver_state.json": json.dumps({"step": self.step, "version": self.version}),
                   COMPLETE_MARKER: json.dumps({"step": self.step, "stage": "ppo"})})
        if not final:
            self.restart_point = (target, self.step, self.version)
            prune_checkpoints(self.cfg.output_dir, 2)
        self.logger.info(f"checkpoint: {redact(target)}")
        return target

    # ------------------------------------------------------------------ shutdown

    def shutdown(self) -> None:
        """Kill every actor and remove every placement group this job created; stop Ray if we started it."""
        self.stop_actors()
        if self.started_ray:
            ray.shutdown()
            self.started_ray = False

    def stop_actors(self, keep_source: bool = False) -> None:
        """Every actor of the job killed (but the source's, `keep_source`) and every placement group removed (Ray
        and the driver stay)."""
        if self.source is not None and not keep_source:
            self.source.shutdown()
        if self.trainers is not None:
            self.trainers.shutdown()
        if self.buffer is not None:
            ray.kill(self.buffer, no_restart=True)
            self.buffer = None

    def _summary(self, history: list[dict], accounting: dict, wall: float) -> dict:
        last = history[-1] if history else {}
        first = history[0] if history else {}
        idle = [m["trainer/idle_fraction"] for m in history]
        return {"stage": "ppo", "steps": self.step, "mode": self.cfg.algorithm.mode, "placement": self.cfg.placement,
                **self.source.summary(),
                "reward_first": first.get("reward"), "reward_last": last.get("reward"), "kl_last": last.get("kl"),
                "actor_loss_last": last.get("actor/loss"), "critic_loss_last": last.get("critic/loss"),
                "trainer_idle_fraction": sum(idle) / len(idle) if idle else None,
                "wall_seconds": wall, "buffer": accounting, **self.evaluator.summary(),
                "final_checkpoint": join(self.cfg.output_dir, "checkpoints", "final"),
                "trainer_restarts": len(self.trainer_restarts), "trainer_restart_log": list(self.trainer_restarts),
                **({"maker_autoscale_changes": [list(c) for c in self.autoscaler.changes]}
                   if self.autoscaler is not None else {})}


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
