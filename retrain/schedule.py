"""Gradual pruning schedules: the rate to reach at each training step.

- ``cubic`` (Zhu & Gupta 2017): ``r(t) = r_f + (r_i - r_f) * (1 - p)^3`` with
  ``p = (t - start) / (end - start)``: prunes fast early, gently near the end;
- ``linear``: ``r(t) = r_i + (r_f - r_i) * p``;
- ``oneshot``: ``r_f`` from ``start`` on.

Masks are recomputed at ``start``, then every ``frequency`` steps until ``end``, and at
``end`` itself, so the final rate is always reached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from drpopt.errors import BadInputError

Kind = Literal["cubic", "linear", "oneshot"]


@dataclass(frozen=True)
class Schedule:
    """When and how far to prune. Steps count ``pruner.update()`` calls from 0."""

    kind: Kind = "cubic"
    final_rate: float = 0.7
    start: int = 0
    end: int = 0
    frequency: int = 1
    initial_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("cubic", "linear", "oneshot"):
            raise BadInputError(f"schedule {self.kind!r} is not one of cubic, linear, oneshot")
        for name, rate in (("final rate", self.final_rate), ("initial rate", self.initial_rate)):
            if not (0.0 <= rate < 1.0):
                raise BadInputError(f"{name} {rate} is outside [0, 1); give e.g. 0.7")
        if self.start < 0 or self.end < self.start:
            raise BadInputError(
                f"schedule steps start={self.start} end={self.end}: need 0 <= start <= end"
            )
        if self.frequency < 1:
            raise BadInputError(f"frequency {self.frequency} must be at least 1 step")

    def rate(self, step: int) -> float:
        """The pruning rate the model should have at ``step``."""
        if step < self.start:
            return 0.0
        if self.kind == "oneshot" or step >= self.end or self.end == self.start:
            return self.final_rate
        p = (step - self.start) / (self.end - self.start)
        if self.kind == "linear":
            return self.initial_rate + (self.final_rate - self.initial_rate) * p
        return self.final_rate + (self.initial_rate - self.final_rate) * (1.0 - p) ** 3

    def is_update_step(self, step: int) -> bool:
        """Whether masks are recomputed at ``step``."""
        if step < self.start:
            return False
        if self.kind == "oneshot":
            return step == self.start
        if step >= self.end:
            return step == self.end
        return (step - self.start) % self.frequency == 0


def as_schedule(
    schedule: str | Schedule,
    final_rate: float,
    start_step: int,
    end_step: int | None,
    frequency: int,
) -> Schedule:
    """``schedule`` as a :class:`Schedule` (a name: from ``start_step`` to ``end_step``,
    which defaults to ``start_step``)."""
    if isinstance(schedule, Schedule):
        return schedule
    end = start_step if end_step is None else end_step
    return Schedule(schedule, final_rate, start_step, end, frequency)  # type: ignore[arg-type]
