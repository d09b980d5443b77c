"""Target selection for the L4 ``proxy`` terminator's ``balance`` input (DESIGN.md §6).

``Balancer.order`` returns every target in try order, so a failed connect falls through to
the next one. Strategies: ``round_robin``, ``random``, ``least_conn`` (fewest active
connections, ties rotated) and ``hash`` (rendezvous hashing on a key, stable when targets
come and go). Passive health: a target marked failed sorts last for ``down_secs``.
State is a few entries per target, nothing per key or per connection.
"""

from __future__ import annotations

import hashlib
import random
import time
from typing import Callable, Sequence

STRATEGIES: tuple[str, ...] = ("round_robin", "random", "least_conn", "hash")

_MASK = (1 << 64) - 1


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _mix(x: int) -> int:
    """MurmurHash3's 64-bit finalizer: a cheap, well-spread mix of one key and one target."""
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & _MASK
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & _MASK
    return x ^ (x >> 33)


class Balancer:
    """Try order over a fixed target list for one strategy."""

    __slots__ = ("strategy", "targets", "down_secs", "_clock", "_next", "_down", "_active", "_seeds")

    def __init__(
        self,
        strategy: str,
        targets: Sequence[str],
        down_secs: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown balance strategy {strategy!r}")
        unique = tuple(dict.fromkeys(targets))
        if not unique:
            raise ValueError("no targets")
        self.strategy = strategy
        self.targets = unique
        self.down_secs = down_secs
        self._clock = clock
        self._next = 0
        self._down: dict[str, float] = {}  # target -> monotonic time it comes back
        self._active = dict.fromkeys(unique, 0)
        self._seeds = {t: _hash64(t.encode()) for t in unique}

    def order(self, key: str | None = None) -> list[str]:
        """All targets, first choice first; targets marked down go last (in the same order)."""
        targets = self.targets
        n = len(targets)
        strategy = self.strategy
        if strategy == "hash" and key is not None:
            kh = _hash64(key.encode())
            seeds = self._seeds
            ranked = sorted(targets, key=lambda t: _mix(kh ^ seeds[t]), reverse=True)
        else:
            if strategy == "random":
                start = int(random.random() * n)
            else:  # round_robin, least_conn tie-break, hash without a key
                start = self._next % n
                self._next = start + 1
            ranked = list(targets[start:] + targets[:start]) if start else list(targets)
            if strategy == "least_conn":
                active = self._active
                ranked.sort(key=active.__getitem__)  # stable: ties keep the rotation
        if self._down:
            ranked = self._down_last(ranked)
        return ranked

    def _down_last(self, ranked: list[str]) -> list[str]:
        now = self._clock()
        down = self._down
        for t, until in list(down.items()):
            if until <= now:
                del down[t]
        if not down:
            return ranked
        return [t for t in ranked if t not in down] + [t for t in ranked if t in down]

    def mark_failed(self, target: str) -> None:
        """Passive health: the target failed a connect; sort it last for ``down_secs``."""
        if target in self._active:
            self._down[target] = self._clock() + self.down_secs

    def mark_ok(self, target: str) -> None:
        """The target answered: it is up again."""
        self._down.pop(target, None)

    def is_down(self, target: str) -> bool:
        until = self._down.get(target)
        return until is not None and until > self._clock()

    def acquire(self, target: str) -> None:
        """A connection to ``target`` started (least_conn counts)."""
        if target in self._active:
            self._active[target] += 1

    def release(self, target: str) -> None:
        """A connection to ``target`` ended."""
        count = self._active.get(target)
        if count:
            self._active[target] = count - 1

    def active(self, target: str) -> int:
        return self._active.get(target, 0)

    def snapshot(self) -> list[dict[str, object]]:
        """Per-target state for the management API: active connections and down seconds left."""
        now = self._clock()
        return [
            {
                "target": t,
                "active": self._active[t],
                "down_secs": max(0.0, round(self._down.get(t, now) - now, 3)),
            }
            for t in self.targets
        ]
