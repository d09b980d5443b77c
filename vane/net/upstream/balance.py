"""Choosing a backend of an upstream group: the ``balance`` strategies (DESIGN.md §6).

Each strategy works over the group's *view*, the backends that may take a new request now
(rebuilt by the group when a backend's state changes, which is rare), and costs per pick:

- ``round_robin`` (``Rotation``): O(1) with equal weights; weighted, O(log n): the positions
  ``0 .. total-1`` are owned by the backends in proportion to their weights and walked with a
  stride coprime to the total, so each backend gets exactly its weight per cycle, interleaved.
- ``random`` (``TwoChoices``): power of two choices, two weighted draws (O(log n)) and the
  one with fewer requests in flight per unit of weight.
- ``least_conn`` (``LeastConn``): fewest requests in flight per unit of weight, ties to the one
  that changed least recently; a heap with lazy deletion, O(log n) per change and per pick.
- ``hash`` (``Ring``): a consistent-hash ring with ``points`` virtual nodes per backend placed by
  the backend's address alone (SHAKE-256 of it), so removing a backend moves only the keys it owned; a pick is
  one binary search (backends that cannot take requests are filtered out of a copy of the
  ring when the view changes). Nothing is kept per key.

A backend here is anything with ``weight``, ``active``, ``in_view`` and ``lc_seq`` (``vane.net.upstream.group.Backend``).
"""

from __future__ import annotations

import hashlib
import sys
from array import array
from bisect import bisect_right
from heapq import heapify, heappop, heappush
from math import gcd
from random import random
from typing import Any, Sequence
from zlib import crc32

__all__ = ["LeastConn", "Ring", "Rotation", "TwoChoices", "key_hash"]

_MASK = (1 << 64) - 1
_OWNER_MASK = (1 << 16) - 1     # a ring point's low bits: the index of its backend


def _mix(x: int) -> int:
    """MurmurHash3's 64-bit finalizer: spreads a 32- or 64-bit value over 64 bits."""
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & _MASK
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & _MASK
    return x ^ (x >> 33)


def key_hash(key: str) -> int:
    """A stable 64-bit position for a hash key (the same in every process and after restarts)."""
    return _mix(crc32(key.encode("utf-8", "surrogatepass")) | (len(key) << 32))


def _cumulative(view: Sequence[Any]) -> list[int]:
    out, total = [], 0
    for b in view:
        total += b.weight
        out.append(total)
    return out


class Rotation:
    """Weighted round robin over a view (see the module docstring)."""

    __slots__ = ("view", "n", "pos", "cum", "total", "stride", "pick")

    def __init__(self, view: Sequence[Any], start: int = 0) -> None:
        self.view = view
        self.n = len(view)
        weights = {b.weight for b in view}
        if len(weights) <= 1:
            self.pos = start % self.n if self.n else 0
            self.cum: list[int] = []
            self.total = self.n
            self.stride = 1
            self.pick = self._equal
            return
        self.cum = _cumulative(view)
        self.total = total = self.cum[-1]
        stride = max(1, round(total * 0.6180339887))
        while gcd(stride, total) != 1:
            stride += 1
        self.stride = stride % total or 1
        self.pos = start % total
        self.pick = self._weighted

    def _equal(self) -> Any:
        i = self.pos
        self.pos = i + 1 if i + 1 < self.n else 0
        return self.view[i]

    def _weighted(self) -> Any:
        p = self.pos
        self.pos = (p + self.stride) % self.total
        return self.view[bisect_right(self.cum, p)]


class TwoChoices:
    """``random``: two weighted draws, the less loaded one (per unit of weight) wins."""

    __slots__ = ("view", "n", "cum", "total", "pick", "pos")

    def __init__(self, view: Sequence[Any], start: int = 0) -> None:
        self.view = view
        self.n = len(view)
        self.pos = 0
        if len({b.weight for b in view}) <= 1:
            self.cum: list[int] = []
            self.total = self.n
            self.pick = self._equal
        else:
            self.cum = _cumulative(view)
            self.total = self.cum[-1]
            self.pick = self._weighted

    def _equal(self) -> Any:
        view, n = self.view, self.n
        a = view[int(random() * n)]
        b = view[int(random() * n)]
        return a if a.active <= b.active else b

    def _weighted(self) -> Any:
        view, cum, total = self.view, self.cum, self.total
        a = view[bisect_right(cum, int(random() * total))]
        b = view[bisect_right(cum, int(random() * total))]
        return a if a.active * b.weight <= b.active * a.weight else b


class LeastConn:
    """``least_conn``: a heap of (in flight / weight, change number, backend); an entry whose
    change number is not the backend's latest is stale and dropped when it surfaces."""

    __slots__ = ("view", "heap", "seq", "limit")

    def __init__(self, view: Sequence[Any], start: int = 0) -> None:
        self.view = view
        self.seq = 0
        self.limit = 4 * len(view) + 64
        self.heap: list[tuple[float, int, Any]] = []
        self._fill()

    def _fill(self) -> None:
        heap = []
        for b in self.view:
            self.seq += 1
            b.lc_seq = self.seq
            heap.append((b.active / b.weight, self.seq, b))
        heapify(heap)
        self.heap = heap

    def pick(self) -> Any:
        heap = self.heap
        while heap:
            entry = heap[0]
            b = entry[2]
            if b.lc_seq == entry[1]:
                return b
            heappop(heap)
        return None

    def changed(self, b: Any) -> None:
        """``b``'s requests in flight changed (called by the backend)."""
        if not b.in_view:
            return
        self.seq += 1
        b.lc_seq = self.seq
        heappush(self.heap, (b.active / b.weight, self.seq, b))
        if len(self.heap) > self.limit:
            self._fill()


class Ring:
    """A consistent-hash ring: sorted points and the backend owning each.

    ``only(members)`` is the same ring without the points of other backends, which maps every
    key exactly as walking the whole ring past them would: a group keeps the ring of its
    backends and, while some cannot take requests, a filtered copy, so a pick is one binary
    search however many are down.
    """

    __slots__ = ("points", "owners", "size")

    def __init__(self, points: array, owners: list) -> None:
        self.points = points
        self.owners = owners
        self.size = len(owners)

    @classmethod
    def build(cls, backends: Sequence[Any], addresses: Sequence[str], points_per_weight: int) -> "Ring":
        """``points_per_weight * weight`` points per backend, drawn from SHAKE-256 of its address
        (the same on every machine and release); the low bits of each point name its owner."""
        if len(backends) > _OWNER_MASK + 1:
            raise ValueError(f"a hash ring holds at most {_OWNER_MASK + 1} backends")
        keep = ~_OWNER_MASK & _MASK
        tagged: list[int] = []
        for i, (b, address) in enumerate(zip(backends, addresses, strict=True)):
            n = points_per_weight * b.weight
            chunk = array("Q")
            chunk.frombytes(hashlib.shake_256(address.encode("utf-8")).digest(8 * n))
            if sys.byteorder == "big":
                chunk.byteswap()        # little-endian everywhere
            tagged.extend([(p & keep) | i for p in chunk])
        tagged.sort()
        # the points without their owner bits: the same whichever backends are beside them
        return cls(array("Q", [p & keep for p in tagged]), [backends[p & _OWNER_MASK] for p in tagged])

    def only(self, members: Any) -> "Ring":
        keep = [i for i, b in enumerate(self.owners) if b in members]
        points = self.points
        owners = self.owners
        return Ring(array("Q", [points[i] for i in keep]), [owners[i] for i in keep])

    def pick(self, h: int, skip: Any = None) -> Any:
        """The owner of the first point clockwise from ``h`` (not in ``skip``, the backends a
        retry already tried); None when the ring is empty or all of it is skipped."""
        size = self.size
        if not size:
            return None
        i = bisect_right(self.points, h)
        if i >= size:
            i = 0
        if skip is None:
            return self.owners[i]
        owners = self.owners
        for _ in range(size):
            b = owners[i]
            if b not in skip:
                return b
            i += 1
            if i >= size:
                i = 0
        return None
