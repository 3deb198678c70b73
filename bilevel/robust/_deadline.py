"""A wall-clock budget shared by the nested solves of one robust run."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["Deadline"]


@dataclass(frozen=True)
class Deadline:
    """``time_limit`` seconds from construction (``None``: no limit), on ``perf_counter``.

    ``remaining(cap)`` is what one nested solve may use: ``min(cap, at)`` with
    ``at = max(end - now, 0)`` (``None`` when neither bounds it). Zero is a valid answer:
    :func:`bilevel.robust._milp.solve_milp` and the Neur2RO MILPs raise time limits below
    ``1e-3`` s to ``1e-3`` s (HiGHS refuses zero), which is the only floor.
    """

    time_limit: float | None = None
    start: float = field(default_factory=time.perf_counter)

    @property
    def end(self) -> float | None:
        return None if self.time_limit is None else self.start + self.time_limit

    def elapsed(self) -> float:
        """Seconds since construction."""
        return time.perf_counter() - self.start

    def remaining(self, cap: float | None = None) -> float | None:
        """Seconds left, capped by ``cap``; ``None`` when unlimited and uncapped."""
        end = self.end
        left = None if end is None else max(end - time.perf_counter(), 0.0)
        if cap is None:
            return left
        return cap if left is None else min(cap, left)

    def expired(self) -> bool:
        """Whether the limit has been reached."""
        end = self.end
        return end is not None and time.perf_counter() >= end
