"""The record of one walk: nodes, branches, timings, missing keys, errors (for the flow log)."""

from __future__ import annotations


class Trajectory:
    """Owns one walk's record while it runs; ``freeze()`` hands the flow log a copy."""

    __slots__ = ("steps", "missing", "errors", "rule", "outcome")

    def __init__(self) -> None:
        self.steps: list[tuple[str, str, str, float]] = []  # (node id, plugin, branch, ms)
        self.missing: list[str] | None = None
        self.errors: list[str] | None = None
        self.rule: str | None = None
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

    def freeze(self) -> tuple:
        """The record as it stands, made of strings, numbers and tuples only: the flow log
        keeps thousands of these, and the garbage collector stops tracking such tuples (a
        tracked object graph per kept entry would be scanned by every full collection)."""
        missing, errors = self.missing, self.errors
        return (self.rule, tuple(self.steps), self.outcome, tuple(missing) if missing else (),
                tuple(errors) if errors else ())


def thaw(frozen: tuple) -> dict:
    """A frozen trajectory as the flow-log entry fields it contributes (DESIGN.md §9)."""
    rule, steps, outcome, missing, errors = frozen
    return {"rule": rule,
            "steps": [{"node": n, "plugin": p, "branch": b, "ms": round(ms, 3)} for n, p, b, ms in steps],
            "outcome": outcome, "missing": list(missing), "errors": list(errors)}
