"""The record of one walk: nodes, branches, timings, missing keys, errors (for the flow log)."""

from __future__ import annotations

import time


class Trajectory:
    __slots__ = ("steps", "missing", "errors", "rule", "t0", "outcome")

    def __init__(self) -> None:
        self.steps: list[tuple[str, str, str, float]] = []  # (node id, plugin, branch, ms)
        self.missing: list[str] | None = None
        self.errors: list[str] | None = None
        self.rule: str | None = None
        self.t0 = time.perf_counter()
        self.outcome = ""

    def note_missing(self, key: str) -> None:
        if self.missing is None:
            self.missing = []
        if len(self.missing) < 32:
            self.missing.append(key)

    def note_error(self, message: str) -> None:
        if self.errors is None:
            self.errors = []
        if len(self.errors) < 16:
            self.errors.append(message)

    @property
    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.t0) * 1000.0

    def to_dict(self) -> dict:
        return {
            "rule": self.rule,
            "steps": [{"node": n, "plugin": p, "branch": b, "ms": round(ms, 3)} for n, p, b, ms in self.steps],
            "outcome": self.outcome,
            "missing": self.missing or [],
            "errors": self.errors or [],
            "ms": round(self.elapsed_ms, 3),
        }
