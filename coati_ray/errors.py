"""User-facing errors: each one renders as a single line that says what, where and how to fix."""


class CoatiError(Exception):
    """Base class for errors the launchers print as one line: bad input (config, data, model
    directories) and runs that cannot go on (a worker lost for good), each saying how to proceed."""


class ConfigError(CoatiError):
    """A config key is unknown, mistyped or inconsistent with another one."""


class DataError(CoatiError):
    """A dataset file is missing, empty, or has a row without its fields."""


class ModelError(CoatiError):
    """A model directory is missing or unusable, or a state dict does not match a model."""


class WorkerLost(CoatiError):
    """A Ray actor the run cannot do without died (a trainer rank, or a maker past its restarts)."""


class MakerUnplaced(WorkerLost):
    """A maker Ray did not place (or that did not load) within maker.start_timeout_s."""


class TrainerLost(WorkerLost):
    """A trainer rank died (its process, or its node): the job restarts its actors from the last complete
    checkpoint up to `<role>_trainer.max_restarts` times (actors/driver.py); past that the run stops with this
    line. `names`: the dead ranks ('actor-trainer-1'); `roles`: their groups (every group when unknown)."""

    def __init__(self, message: str, names: tuple = (), step: int = 0):
        super().__init__(message)
        self.names, self.step = tuple(names), step
        self.roles = tuple(sorted({n.rsplit("-trainer-", 1)[0] for n in self.names if "-trainer-" in n}))


class RewardError(CoatiError):
    """A training reward source failed: a reward function raised or answered wrongly, or the reward
    service could not be reached."""


class RunStalled(CoatiError):
    """A PPO step made no progress for watchdog.stall_s: the line names the Ray actors that do not respond."""


class RolloutError(CoatiError):
    """Multi-turn rollouts cannot go on: the environment failed in more episodes than the run allows."""
