"""Limits shared by the master and its workers: fixed-size tables in one shared mapping.

The master creates a ``SharedLimits`` before it forks; every worker inherits the mapping, so
the security floor's connection caps and TLS handshake rate and the ``ratelimit`` buckets hold
for the daemon as a whole, not per process. Everything is sized at creation (bounded by
construction: no table grows, whatever the clients send).

Locks are POSIX record locks (``fcntl.lockf``) on bytes of the mapping's memfd, one per
stripe of buckets. The kernel releases a record lock when its process dies, so a worker killed
in the middle of an update never wedges the others. Record locks exclude processes, not the
greenlets of one process: every operation here runs on the hub thread, does no I/O and never
yields while it holds a lock.

Keys are 64-bit ``hash()`` values of strings: a forked worker shares the master's hash secret,
so every process computes the same key, and clients cannot aim collisions at a secret hash.
"""

from __future__ import annotations

import fcntl
import mmap
import os

__all__ = ["SharedLimits", "ConnCounts", "Windows", "Buckets"]

WORD = 8
STRIPES = 64          # locks per table
WAYS = 8              # slots per bucket


def _key(text: str) -> int:
    return hash(text) or 1   # 0 marks an empty slot


def _pow2(n: int) -> int:
    p = 1
    while p < n:
        p <<= 1
    return p


class _Region:
    """One anonymous shared mapping; its fd carries the record locks."""

    def __init__(self, words: int) -> None:
        self.fd = os.memfd_create("vane-shared", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, max(words, 1) * WORD)
        self.map = mmap.mmap(self.fd, max(words, 1) * WORD, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        view = memoryview(self.map)
        self.ints = view.cast("q")
        self.floats = view.cast("d")

    def lock(self, n: int) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_EX, 1, n)

    def unlock(self, n: int) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, n)


class _Table:
    """``buckets`` × ``WAYS`` slots of an int64 key and ``fields`` float64 values, in a region
    from word ``base``; locks ``lock_base .. lock_base + STRIPES``. ``find`` returns the index
    of the key's first field word, inserting the key if it is missing: into an empty slot, else
    into the slot ``reusable`` picks (the key is then new; its fields are zeroed)."""

    def __init__(self, region: _Region, base: int, buckets: int, fields: int, lock_base: int) -> None:
        self.region = region
        self.base = base
        self.mask = buckets - 1
        self.fields = fields
        self.slot_words = 1 + fields
        self.lock_base = lock_base

    @staticmethod
    def words(buckets: int, fields: int) -> int:
        return buckets * WAYS * (1 + fields)

    def stripe(self, key: int) -> int:
        return self.lock_base + (key & self.mask & (STRIPES - 1))

    def slots(self, key: int) -> range:
        start = self.base + (key & self.mask) * WAYS * self.slot_words
        return range(start, start + WAYS * self.slot_words, self.slot_words)

    def find(self, key: int, reusable) -> int:
        """Caller holds the key's stripe lock. -1 if the bucket has no room for a new key."""
        ints = self.region.ints
        empty = -1
        for slot in self.slots(key):
            k = ints[slot]
            if k == key:
                return slot + 1
            if k == 0 and empty < 0:
                empty = slot
        slot = empty if empty >= 0 else reusable(self.slots(key))
        if slot < 0:
            return -1
        ints[slot] = key
        floats = self.region.floats
        for i in range(slot + 1, slot + self.slot_words):
            floats[i] = 0.0
        return slot + 1

    def oldest(self, slots: range, field: int) -> int:
        """The slot whose ``field`` (a timestamp) is smallest: least recently used."""
        floats = self.region.floats
        best, best_t = slots[0], floats[slots[0] + 1 + field]
        for slot in slots:
            if floats[slot + 1 + field] < best_t:
                best, best_t = slot, floats[slot + 1 + field]
        return best


class ConnCounts:
    """Open connections per client IP and in total, counted per worker so that the master can
    zero a dead worker's share (``clear_worker``). ``acquire`` checks both caps and counts the
    connection in one step under the IP's stripe lock and the totals lock."""

    def __init__(self, region: _Region, base: int, buckets: int, workers: int, lock_base: int) -> None:
        self.region = region
        self.workers = workers
        self.totals = base                                  # one word per worker
        self.table = _Table(region, base + workers, buckets, workers, lock_base)
        self.totals_lock = lock_base + STRIPES

    locks = STRIPES + 1

    @staticmethod
    def words(buckets: int, workers: int) -> int:
        return workers + _Table.words(buckets, workers)

    def _idle(self, slots: range) -> int:
        floats, n = self.region.floats, self.workers
        for slot in slots:
            if not any(floats[slot + 1 + w] for w in range(n)):
                return slot
        return -1

    def acquire(self, worker: int, ip: str, max_total: int, max_per_ip: int) -> str | None:
        """Count a new connection of ``worker`` from ``ip``; None if admitted, else the limit
        it would break ("max_connections", "max_connections_per_ip")."""
        region, table, floats = self.region, self.table, self.region.floats
        key = _key(ip)
        stripe = table.stripe(key)
        region.lock(stripe)
        try:
            at = table.find(key, self._idle)
            if at < 0:
                return "max_connections"       # every slot of the bucket holds a live client
            if sum(floats[at:at + self.workers]) >= max_per_ip:
                return "max_connections_per_ip"
            region.lock(self.totals_lock)
            try:
                if sum(floats[self.totals:self.totals + self.workers]) >= max_total:
                    return "max_connections"
                floats[self.totals + worker] += 1.0
            finally:
                region.unlock(self.totals_lock)
            floats[at + worker] += 1.0
            return None
        finally:
            region.unlock(stripe)

    def release(self, worker: int, ip: str) -> None:
        region, table, floats = self.region, self.table, self.region.floats
        key = _key(ip)
        stripe = table.stripe(key)
        region.lock(stripe)
        try:
            for slot in table.slots(key):
                if region.ints[slot] == key:
                    if floats[slot + 1 + worker] >= 1.0:
                        floats[slot + 1 + worker] -= 1.0
                    break
            region.lock(self.totals_lock)
            if floats[self.totals + worker] >= 1.0:
                floats[self.totals + worker] -= 1.0
            region.unlock(self.totals_lock)
        finally:
            region.unlock(stripe)

    def per_ip(self, ip: str) -> int:
        key = _key(ip)
        floats = self.region.floats
        for slot in self.table.slots(key):
            if self.region.ints[slot] == key:
                return int(sum(floats[slot + 1:slot + 1 + self.workers]))
        return 0

    def active(self) -> list[int]:
        """Open connections of each worker (read without a lock: a balancing hint)."""
        floats = self.region.floats
        return [int(floats[self.totals + w]) for w in range(self.workers)]

    def clear_worker(self, worker: int) -> None:
        """The master, after ``worker`` died: its connections are gone."""
        region, table, floats = self.region, self.table, self.region.floats
        for stripe in range(STRIPES):
            region.lock(table.lock_base + stripe)
            try:
                for bucket in range(stripe, table.mask + 1, STRIPES):
                    start = table.base + bucket * WAYS * table.slot_words
                    for slot in range(start, start + WAYS * table.slot_words, table.slot_words):
                        floats[slot + 1 + worker] = 0.0
            finally:
                region.unlock(table.lock_base + stripe)
        region.lock(self.totals_lock)
        floats[self.totals + worker] = 0.0
        region.unlock(self.totals_lock)


class _LruTable:
    """A ``_Table`` whose first field is a last-use time: when a bucket is full, the least
    recently used key gives its slot up."""

    locks = STRIPES
    fields = 1

    def __init__(self, region: _Region, base: int, buckets: int, lock_base: int) -> None:
        self.region = region
        self.table = _Table(region, base, buckets, self.fields, lock_base)

    @classmethod
    def words(cls, buckets: int) -> int:
        return _Table.words(buckets, cls.fields)

    def _lru(self, slots: range) -> int:
        return self.table.oldest(slots, 0)


class Windows(_LruTable):
    """Events per key per one-second window (the TLS handshake rate per IP)."""

    fields = 2   # window start, count

    def hit(self, text: str, now: float, limit: int) -> bool:
        """Count one event for ``text`` at ``now``; False past ``limit`` in its window."""
        region, table, floats = self.region, self.table, self.region.floats
        key = _key(text)
        stripe = table.stripe(key)
        region.lock(stripe)
        try:
            at = table.find(key, self._lru)
            if now - floats[at] >= 1.0:
                floats[at] = now
                floats[at + 1] = 1.0
                return True
            floats[at + 1] += 1.0
            return floats[at + 1] <= limit
        finally:
            region.unlock(stripe)


class Buckets(_LruTable):
    """Token buckets by key (``ratelimit`` across workers); an evicted key starts again with a
    full bucket."""

    fields = 3   # last, tokens, in use

    def take(self, text: str, rate: float, burst: float, now: float) -> tuple[bool, float]:
        """Take one token from ``text``'s bucket: (allowed, tokens left)."""
        region, table, floats = self.region, self.table, self.region.floats
        key = _key(text)
        stripe = table.stripe(key)
        region.lock(stripe)
        try:
            at = table.find(key, self._lru)
            if floats[at + 2] == 0.0:                      # a new key: a full bucket
                tokens = burst
                floats[at + 2] = 1.0
            else:
                tokens = min(burst, floats[at + 1] + (now - floats[at]) * rate)
            floats[at] = now
            if tokens >= 1.0:
                floats[at + 1] = tokens - 1.0
                return True, tokens - 1.0
            floats[at + 1] = tokens
            return False, tokens
        finally:
            region.unlock(stripe)


class SharedLimits:
    """The tables of one daemon: connection counts for ``workers`` processes, handshake windows
    and rate-limit buckets. Create it in the master before forking."""

    def __init__(self, workers: int, max_connections: int, handshake_keys: int = 65536,
                 bucket_keys: int = 131072) -> None:
        conn_buckets = _pow2(max(STRIPES, 2 * max_connections // WAYS))
        hs_buckets = _pow2(max(STRIPES, handshake_keys // WAYS))
        rl_buckets = _pow2(max(STRIPES, bucket_keys // WAYS))
        sizes = [ConnCounts.words(conn_buckets, workers), Windows.words(hs_buckets), Buckets.words(rl_buckets)]
        self.region = region = _Region(sum(sizes))
        base = 0
        self.conns = ConnCounts(region, base, conn_buckets, workers, 0)
        base += sizes[0]
        self.handshakes = Windows(region, base, hs_buckets, ConnCounts.locks)
        base += sizes[1]
        self.buckets = Buckets(region, base, rl_buckets, ConnCounts.locks + Windows.locks)
        self.bytes = sum(sizes) * WORD
