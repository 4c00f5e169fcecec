"""Where a PPO job's experience comes from: the seam between the driver and whoever generates.

    source = experience_source(job)         # placement: separate -> MakerSource, colocated -> ColocatedSource
    source.start(setup_trainers)            # its workers, and the trainer groups' set-up at the point it wants
    source.attach(watchdog)                 # waits go through the job's watchdog
    result = source.run(step)               # generate and train one step (a StepResult)
    report = source.publish(version)        # the new weights where generation happens next
    loads = source.collect_loads()          # what the workers reported loading since the last call
    source.finish(); source.shutdown()

`MakerSource` is today's shape: separate maker actors fed by the scheduler, weights published to them
after every update (object store or collective). `ColocatedSource` (actors/colocated.py) lets the
actor group's ranks generate with their own weights, so nothing is published. A new placement is one
new class with these methods and a coati_ray.seams.Placement naming it (its name, `source="module:Class"`,
whether it runs makers, supports async mode, has the trainers generate), registered or named
`placement: module:attr`; the two built-in ones are registered the same way (coati_ray/config/placement.py).
"""

from __future__ import annotations

from typing import Callable, Optional

from actors.maker_pool import MakerPool
from actors.scheduling import StepResult, StepScheduler
from actors.weight_sync import WeightSync


class ExperienceSource:
    """The interface RLJob drives (see the module docstring); the defaults suit a source without makers."""

    name = "?"

    def start(self, setup_trainers: Callable[[], None]) -> None:
        raise NotImplementedError

    def attach(self, watchdog) -> None:
        self.watchdog = watchdog

    def run(self, step: int) -> StepResult:
        raise NotImplementedError

    # a trainer restart (actors/trainer_restart.py): a source whose workers are not the trainers keeps them
    def keeps_workers(self) -> bool:
        """Whether this source's workers can stay while the trainer groups restart from a checkpoint."""
        return False

    def pause(self) -> None:
        """Before the trainer groups go: let go of anything that ties the workers to them."""

    def rejoin(self, setup_trainers: Callable[[], None]) -> None:
        """The new trainer groups (and buffer) are up: the kept workers work for them from the job's step."""
        raise NotImplementedError

    def publish(self, version: int) -> dict:
        """What the weight publication reported: {export_seconds, bytes, transport}."""
        raise NotImplementedError

    def collect_loads(self) -> list:
        """Weight loads the workers reported since the last call (sync mode: after waiting for them)."""
        return []

    def finish(self) -> None:
        """End of the run: nothing in flight, every generating worker holds the final weights."""

    def evaluation_target(self):
        """An actor handle with `evaluate(prompt_items, greedy, seed, samples_per_prompt)`, or None."""
        return None

    def handles(self) -> dict:
        """{name: handle} of the source's own actors (the watchdog pings them)."""
        return {}

    def activity(self) -> dict[str, str]:
        return {}

    def processes_changed(self) -> bool:
        """Whether the set of processes changed since the last call (the watchdog asks their pids again)."""
        return False

    # scaling: only makers scale
    def check_fits(self, n: int) -> None:
        pass

    def scale_to(self, n: int) -> None:
        pass

    def take_dropped(self) -> int:
        return 0

    @property
    def num_makers(self) -> int:
        return 0

    @property
    def restarts(self) -> int:
        return 0

    def summary(self) -> dict:
        return {}

    def shutdown(self) -> None:
        pass


class MakerSource(ExperienceSource):
    """Separate maker actors (actors/maker_pool.py) fed by the scheduler; weights published to them by
    WeightSync after every update."""

    name = "separate"

    def __init__(self, job):
        self.job = job
        self.pool: Optional[MakerPool] = None
        self.sync: Optional[WeightSync] = None
        self.scheduler: Optional[StepScheduler] = None
        self._located = None

    def start(self, setup_trainers: Callable[[], None]) -> None:
        job, cfg = self.job, self.job.cfg
        self.pool = MakerPool(cfg, job.cfg_dict, job.buffer, job.logger.info)
        self.sync = WeightSync(cfg, job.trainers, self.pool, job.logger.info)
        self.pool.scale_to(job.target_makers, wait=False)  # makers load their models while the groups set up
        setup_trainers()
        self.pool.wait_ready()

    def attach(self, watchdog) -> None:
        job, cfg = self.job, self.job.cfg
        self.watchdog = watchdog
        self._located = (self.pool.restarts, tuple(self.pool.makers))
        self.pool.wait_all = watchdog.wait_all
        self.scheduler = StepScheduler(self.pool, job.trainers, job.buffer, job.prompts, job.items_per_step,
                                       job.max_staleness, cfg.buffer.capacity // cfg.maker.batch_size,
                                       last_ticket=cfg.algorithm.max_steps * job.items_per_step, first_step=job.step,
                                       wait=watchdog.wait)

    def run(self, step: int) -> StepResult:
        return self.scheduler.run(step)  # generate and update, overlapped as the mode allows

    def keeps_workers(self) -> bool:
        return self.pool is not None and len(self.pool) > 0

    def pause(self) -> None:
        """The makers keep their processes and models (reference, reward, critic): the broadcast groups of the old
        trainer ranks left, what was in flight dropped, and the pool down to the job's target (its starting size
        at most: the new trainers are placed first, and a lost node took capacity; _scale grows it again)."""
        self.sync.close()  # fire and forget
        self.pool.drop_in_flight()
        if len(self.pool) > self.job.target_makers:
            self.pool.scale_to(self.job.target_makers)

    def rejoin(self, setup_trainers: Callable[[], None]) -> None:
        """The weights of the checkpoint the trainers went back to are the next the makers load."""
        job = self.job
        self.pool.rewind(job.buffer)
        self.sync = WeightSync(job.cfg, job.trainers, self.pool, job.logger.info)
        setup_trainers()

    def publish(self, version: int) -> dict:
        return self.sync.publish(version)

    def collect_loads(self) -> list:
        return self.pool.wait_loads() if self.job.cfg.algorithm.mode == "sync" else self.pool.finished_loads()

    def finish(self) -> None:
        self.pool.drain()
        self.pool.wait_loads()  # every maker holds the final weights

    def evaluation_target(self):
        return self.pool.first()

    def handles(self) -> dict:
        return {f"maker-{i}": h for i, h in self.pool.makers.items()} if self.pool else {}

    def activity(self) -> dict[str, str]:
        return self.pool.activity() if self.pool else {}

    def processes_changed(self) -> bool:
        now = (self.pool.restarts, tuple(self.pool.makers))
        changed, self._located = now != self._located, now
        return changed

    def check_fits(self, n: int) -> None:
        if self.pool is not None:
            self.pool.check_fits(n)

    def scale_to(self, n: int) -> None:
        self.pool.scale_to(n)  # added makers load before the step (maker.start_timeout_s at most)

    def take_dropped(self) -> int:
        return self.pool.take_dropped()

    @property
    def num_makers(self) -> int:
        return len(self.pool) if self.pool else 0

    @property
    def restarts(self) -> int:
        return self.pool.restarts if self.pool else 0

    def summary(self) -> dict:
        pool = self.pool
        return {"makers": len(pool), "maker_restarts": pool.restarts, "maker_batches_regenerated": pool.regenerated,
                "maker_batches_behind": pool.behind, "makers_dropped": pool.dropped,
                "batches_lost_with_a_node": self.scheduler.remade_lost if self.scheduler else 0}

    def shutdown(self) -> None:
        if self.sync is not None:
            self.sync.close()
        if self.pool is not None:
            self.pool.kill_all()


def source_class(placement) -> type:
    """The ExperienceSource class of a coati_ray.seams.Placement (one line when it is not one)."""
    from coati_ray.errors import ConfigError
    from coati_ray.seams import import_path

    cls = import_path(placement.source, "placement", "my_pkg.placements:RingSource")
    if not isinstance(cls, type) or not issubclass(cls, ExperienceSource):
        raise ConfigError(f"config error: placement: {placement.name}'s source '{placement.source}' is not an "
                          "ExperienceSource subclass; subclass actors.experience_source.ExperienceSource "
                          "(docs/extending.md)")
    return cls


def check_source(placement) -> None:
    """Before Ray starts: the placement's source imports and is an ExperienceSource."""
    source_class(placement)


def experience_source(job) -> ExperienceSource:
    """The source of the job's placement (coati_ray.seams.PLACEMENTS: built in, or one of your own)."""
    return source_class(job.placement)(job)
