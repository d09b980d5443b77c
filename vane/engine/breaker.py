"""Passive circuit breaker for external plugins (DESIGN.md §4, seed 001).

A runtime error or a ``failure`` branch opens the breaker; during the quiet period calls skip
the I/O and return ``failure``; the next success closes it.
"""

from __future__ import annotations

import time
from typing import Callable


class Breaker:
    __slots__ = ("quiet_period", "clock", "open_until", "failures", "last_error")

    def __init__(self, quiet_period: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.quiet_period = quiet_period
        self.clock = clock
        self.open_until = 0.0
        self.failures = 0
        self.last_error: str | None = None

    def allow(self) -> bool:
        return self.open_until == 0.0 or self.clock() >= self.open_until

    def failed(self, error: str | None = None) -> None:
        self.failures += 1
        self.last_error = error
        self.open_until = self.clock() + self.quiet_period

    def succeeded(self) -> None:
        self.open_until = 0.0

    @property
    def state(self) -> str:
        if self.open_until == 0.0:
            return "closed"
        return "open" if self.clock() < self.open_until else "half-open"

    def to_dict(self) -> dict:
        return {"state": self.state, "failures": self.failures, "last_error": self.last_error,
                "quiet_period": self.quiet_period}
