"""Backend choice: weighted round robin, power of two choices, least_conn, the hash ring."""

from __future__ import annotations

import random
import tracemalloc
from collections import Counter

from vane.net.upstream.balance import LeastConn, Ring, Rotation, TwoChoices, key_hash


class B:
    """The fields a strategy reads of a backend."""

    def __init__(self, name: str, weight: int = 1) -> None:
        self.name = name
        self.weight = weight
        self.active = 0
        self.in_view = True
        self.lc_seq = 0

    def __repr__(self) -> str:
        return self.name


def backends(*weights: int) -> list[B]:
    return [B(chr(ord("a") + i), w) for i, w in enumerate(weights)]


def test_round_robin_rotates_in_order():
    view = backends(1, 1, 1)
    rr = Rotation(view)
    assert [rr.pick().name for _ in range(7)] == list("abcabca")


def test_weighted_round_robin_gives_each_its_weight_per_cycle_interleaved():
    view = backends(5, 1, 1)
    rr = Rotation(view)
    picks = [rr.pick().name for _ in range(7 * 20)]
    for cycle in range(20):
        assert Counter(picks[cycle * 7:(cycle + 1) * 7]) == {"a": 5, "b": 1, "c": 1}
    longest = max(len(run) for run in "".join(picks).replace("b", " ").replace("c", " ").split())
    assert longest < 5                        # interleaved, not five in a row
    rr = Rotation(backends(1, 3))
    assert Counter(rr.pick().name for _ in range(400)) == {"a": 100, "b": 300}


def test_rotation_continues_from_where_it_was():
    view = backends(1, 1, 1)
    assert Rotation(view, start=4).pick().name == "b"


def test_two_choices_prefers_the_less_loaded_and_respects_weights():
    random.seed(3)
    view = backends(1, 1, 1, 1)
    view[0].active = 50
    tc = TwoChoices(view)
    counts = Counter(tc.pick().name for _ in range(4000))
    assert counts["a"] < 400                  # picked only when drawn twice (1/16)
    weighted = backends(1, 3)
    tc = TwoChoices(weighted)
    counts = Counter(tc.pick().name for _ in range(8000))
    assert 0.05 < counts["a"] / 8000 < 0.25   # two draws of 1/4: the lighter one alone wins 1/16


def test_least_conn_picks_fewest_in_flight_per_weight_and_rotates_ties():
    view = backends(1, 1, 2)
    lc = LeastConn(view)

    def begin(b: B) -> B:
        b.active += 1
        lc.changed(b)
        return b

    def end(b: B) -> None:
        b.active -= 1
        lc.changed(b)

    first = [begin(lc.pick()).name for _ in range(3)]
    assert sorted(first) == ["a", "b", "c"]     # ties: each once before any twice
    assert begin(lc.pick()).name == "c"         # 1/2 in flight beats 1/1
    end(view[0])
    assert lc.pick().name == "a"


def test_least_conn_heap_stays_bounded():
    view = backends(1, 1)
    lc = LeastConn(view)
    for _ in range(10000):
        b = view[0]
        b.active += 1
        lc.changed(b)
        b.active -= 1
        lc.changed(b)
    assert len(lc.heap) <= lc.limit + 1


def test_ring_moves_only_the_removed_backends_keys():
    names = [f"http://10.0.0.{i}:80" for i in range(1, 6)]
    full = [B(n) for n in names]
    ring = Ring.build(full, names, 100)
    keys = [f"session-{i}" for i in range(20000)]
    before = {k: ring.pick(key_hash(k)).name for k in keys}
    gone = names[2]
    rest = [B(n) for n in names if n != gone]
    after_ring = Ring.build(rest, [b.name for b in rest], 100)
    after = {k: after_ring.pick(key_hash(k)).name for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(before[k] == gone for k in moved)            # nothing else moved
    assert len(moved) == sum(1 for k in keys if before[k] == gone)
    share = Counter(before.values())
    assert all(0.1 < n / len(keys) < 0.3 for n in share.values())   # about a fifth each


def test_ring_weights_are_roughly_respected():
    names = ["a:1", "b:1", "c:1"]
    view = [B("a:1", 1), B("b:1", 1), B("c:1", 2)]
    ring = Ring.build(view, names, 100)
    counts = Counter(ring.pick(key_hash(f"k{i}")).name for i in range(40000))
    assert 0.4 < counts["c:1"] / 40000 < 0.6


def test_a_filtered_ring_maps_keys_as_walking_past_the_missing_would():
    names = [f"b{i}:80" for i in range(8)]
    view = [B(n) for n in names]
    ring = Ring.build(view, names, 100)
    up = frozenset(view[i] for i in (0, 3, 5))
    small = ring.only(up)
    for i in range(3000):
        h = key_hash(f"key{i}")
        skipped = ring.pick(h, [b for b in view if b not in up])
        assert small.pick(h) is skipped
    assert ring.pick(1, view) is None


def test_hash_keys_from_clients_leave_nothing_behind():
    """However many distinct keys clients send, the ring keeps no state per key."""
    names = [f"10.0.0.{i}:80" for i in range(4)]
    ring = Ring.build([B(n) for n in names], names, 100)
    for i in range(1000):                     # warm up whatever is allocated once
        ring.pick(key_hash(f"warm{i}"))
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(100000):
            ring.pick(key_hash(f"attacker-chosen-cookie-{i}"))
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename") if s.size_diff > 0)
    assert grown < 64 * 1024


def test_key_hash_is_stable():
    assert key_hash("abc") == key_hash("abc") != key_hash("abd")
    assert key_hash("\udcff") != key_hash("")    # a lone surrogate is hashed, not refused
