"""The maker pool's autoscaling rule (maker.autoscale), without Ray: what one step tells, and what the pool does.

Each step ends with two facts about the pipeline (`StepSignal`):

    idle_fraction   the share of the step the trainers waited for experience (metrics: trainer/idle_fraction)
    held_samples    the samples left in the replay buffer when the step ended (buffer/held_samples)

and the rule (`decide`) reads the last `window` of them:

    grow by one     every step of the window: idle_fraction > idle_above and held_samples == 0
                    (the makers could not keep the trainers fed, and made nothing ahead)
    shrink by one   every step of the window: held_samples >= one step's rollout
                    (the makers had the whole next step made before the trainers asked: they were ahead as far as
                    admission control lets them, and waited on the buffer)
    else            no change. It never shrinks below `min` nor grows above `max`, or above `useful`: more makers
                    than batches can be in flight at once (batches per step x (max_staleness + 1)) would only wait

The two conditions exclude each other (an empty buffer against a full step), which leaves a band in between where
nothing changes. `Autoscaler` adds the memory: the window starts again after every change (so each decision is
made on steps run with the pool it judges), and a change that reverses the one before needs twice the window
(up to 8 windows; a change in the same direction as the one before resets it), so a pool that sits between two
sizes settles instead of flapping. A maker the cluster could not place counts as a reversal too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

MAX_BACKOFF = 8  # a reversal doubles the window, up to this many windows


@dataclass(frozen=True)
class StepSignal:
    idle_fraction: float  # share of the step the trainers waited for experience
    held_samples: int     # samples in the replay buffer when the step ended


@dataclass(frozen=True)
class Rule:
    min: int
    max: int
    window: int
    idle_above: float
    step_samples: int     # one step's rollout (algorithm.rollout_batch_size)
    useful: int           # makers that can all be busy at once (batches per step x (max_staleness + 1))

    @classmethod
    def of(cls, autoscale, rollout_batch_size: int, batches_per_step: int, max_staleness: int) -> "Rule":
        """The rule of a maker.autoscale config section for a job's batch layout."""
        return cls(autoscale.min, autoscale.max, autoscale.window, autoscale.idle_above, rollout_batch_size,
                   batches_per_step * (max_staleness + 1))


def decide(signals: Sequence[StepSignal], makers: int, rule: Rule, window: Optional[int] = None) -> int:
    """The pool size after the steps of `signals` (oldest first) with `makers` makers: makers + 1, makers - 1 or
    makers, by the rule of the module docstring over the last `window` steps (default rule.window); fewer steps
    than that decide nothing."""
    window = window or rule.window
    if len(signals) < window:
        return makers
    recent = signals[-window:]
    ceiling = min(rule.max, max(rule.useful, rule.min))
    if makers < ceiling and all(s.idle_fraction > rule.idle_above and s.held_samples == 0 for s in recent):
        return makers + 1
    if makers > rule.min and all(s.held_samples >= rule.step_samples for s in recent):
        return makers - 1
    return makers


class Autoscaler:
    """The rule with its memory: `observe` each step, act on what it returns.

        scaler = Autoscaler(rule)
        target = scaler.observe(StepSignal(m["trainer/idle_fraction"], m["buffer/held_samples"]), makers)
        if target != makers: ...ask for target makers...
        scaler.unplaced()      # a maker asked for could not be placed: back off as after a reversal
    """

    def __init__(self, rule: Rule):
        self.rule = rule
        self.signals: list[StepSignal] = []
        self.window = rule.window  # steps the next decision needs (grows after reversals)
        self.last = 0              # direction of the last change: +1, -1, or 0 before any
        self.changes: list[tuple[int, int]] = []  # (makers before, after) of every change, for reports

    def observe(self, signal: StepSignal, makers: int) -> int:
        """Record one step's signal; the pool size to ask for now (`makers` when nothing changes)."""
        self.signals.append(signal)
        del self.signals[:-self.window]
        target = decide(self.signals, makers, self.rule, self.window)
        if target != makers:
            direction = 1 if target > makers else -1
            self._backoff(reversal=self.last != 0 and direction != self.last)
            self.last = direction
            self.changes.append((makers, target))
        return target

    def unplaced(self) -> None:
        """A maker the rule asked for was not placed in time (the cluster did not grow): that change did not
        happen, and the next one waits longer."""
        if self.changes and self.changes[-1][1] > self.changes[-1][0]:
            self.changes.pop()
        self._backoff(reversal=True)
        self.last = -1

    def restarted(self) -> None:
        """The trainer groups started again (a trainer restart): the pipeline's signals start afresh."""
        self.signals.clear()
        self.window, self.last = self.rule.window, 0

    def _backoff(self, reversal: bool) -> None:
        self.signals.clear()
        self.window = min(self.window * 2, self.rule.window * MAX_BACKOFF) if reversal else self.rule.window
