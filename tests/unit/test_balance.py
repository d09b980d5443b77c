"""Target selection: spread, passive health, least_conn, rendezvous hashing."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from vane.net.balance import STRATEGIES, Balancer

TARGETS = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_order_is_a_permutation(strategy):
    b = Balancer(strategy, TARGETS)
    for key in (None, "k1", "k2"):
        assert sorted(b.order(key)) == sorted(TARGETS)


def test_round_robin_rotates():
    b = Balancer("round_robin", TARGETS)
    firsts = [b.order()[0] for _ in range(8)]
    assert firsts == TARGETS + TARGETS
    assert b.order() == TARGETS  # fallbacks follow in list order from the first choice
    assert b.order() == TARGETS[1:] + TARGETS[:1]


def test_random_spreads():
    random.seed(7)
    b = Balancer("random", TARGETS)
    counts = Counter(b.order()[0] for _ in range(4000))
    assert set(counts) == set(TARGETS)
    assert all(800 < c < 1200 for c in counts.values())


def test_down_targets_go_last_and_come_back():
    clock = Clock()
    b = Balancer("round_robin", TARGETS, down_secs=10, clock=clock)
    b.mark_failed(TARGETS[0])
    b.mark_failed(TARGETS[2])
    assert b.is_down(TARGETS[0])
    for _ in range(8):
        order = b.order()
        assert set(order[:2]) == {TARGETS[1], TARGETS[3]}
        assert set(order[2:]) == {TARGETS[0], TARGETS[2]}
    clock.now += 9.9
    assert b.order()[2:] in ([TARGETS[0], TARGETS[2]], [TARGETS[2], TARGETS[0]])
    clock.now += 0.2
    assert not b.is_down(TARGETS[0])
    assert Counter(b.order()[0] for _ in range(8)) == Counter({t: 2 for t in TARGETS})


def test_mark_ok_clears_down():
    b = Balancer("round_robin", TARGETS[:2], clock=Clock())
    b.mark_failed(TARGETS[0])
    assert b.order()[-1] == TARGETS[0] and b.order()[-1] == TARGETS[0]
    b.mark_ok(TARGETS[0])
    assert not b.is_down(TARGETS[0])
    assert {b.order()[0] for _ in range(2)} == set(TARGETS[:2])


def test_all_down_still_returns_everything():
    b = Balancer("hash", TARGETS, clock=Clock())
    for t in TARGETS:
        b.mark_failed(t)
    assert sorted(b.order("k")) == sorted(TARGETS)
    assert b.order("k") == Balancer("hash", TARGETS).order("k")  # same preference among the down


def test_least_conn_prefers_the_idle_one():
    b = Balancer("least_conn", TARGETS)
    for t in TARGETS[:3]:
        b.acquire(t)
    b.acquire(TARGETS[0])
    assert b.order()[0] == TARGETS[3]
    b.acquire(TARGETS[3])
    b.acquire(TARGETS[3])
    order = b.order()
    assert order[:2] in ([TARGETS[1], TARGETS[2]], [TARGETS[2], TARGETS[1]])
    assert order[2:] in ([TARGETS[0], TARGETS[3]], [TARGETS[3], TARGETS[0]])
    b.release(TARGETS[3])
    b.release(TARGETS[3])
    b.release(TARGETS[3])  # never below zero
    assert b.active(TARGETS[3]) == 0
    assert b.order()[0] == TARGETS[3]


def test_least_conn_ties_rotate():
    b = Balancer("least_conn", TARGETS)
    assert [b.order()[0] for _ in range(4)] == TARGETS


def test_least_conn_skips_down_even_when_idle():
    b = Balancer("least_conn", TARGETS[:2], clock=Clock())
    b.acquire(TARGETS[0])
    b.mark_failed(TARGETS[1])
    assert b.order() == [TARGETS[0], TARGETS[1]]


def test_hash_stable_and_spread():
    b = Balancer("hash", TARGETS)
    keys = [f"203.0.113.{i}" for i in range(256)] + [f"user-{i}" for i in range(3744)]
    first = {k: b.order(k)[0] for k in keys}
    again = Balancer("hash", list(reversed(TARGETS)))
    assert all(again.order(k)[0] == first[k] for k in keys)  # list order does not matter
    counts = Counter(first.values())
    assert all(800 < c < 1200 for c in counts.values()), counts


def test_hash_moves_only_the_removed_targets_keys():
    full = Balancer("hash", TARGETS)
    fewer = Balancer("hash", TARGETS[:3])
    keys = [f"k{i}" for i in range(2000)]
    for k in keys:
        before = full.order(k)
        after = fewer.order(k)
        if before[0] != TARGETS[3]:
            assert after[0] == before[0]
        else:
            assert after[0] == before[1]  # the HRW runner-up takes over


def test_hash_without_key_rotates():
    b = Balancer("hash", TARGETS)
    assert [b.order()[0] for _ in range(4)] == TARGETS


def test_hash_down_target_falls_back_to_runner_up():
    b = Balancer("hash", TARGETS, clock=Clock())
    order = b.order("client-1")
    b.mark_failed(order[0])
    assert b.order("client-1") == order[1:] + order[:1]


def test_memory_bounded_by_targets():
    b = Balancer("least_conn", TARGETS, clock=Clock())
    for i in range(1000):
        b.mark_failed(f"unknown-{i}")
        b.acquire(f"unknown-{i}")
        b.release(f"unknown-{i}")
        b.order(f"key-{i}")
    assert len(b._down) == 0 and len(b._active) == len(TARGETS)


def test_duplicates_collapse_and_bad_input_rejected():
    assert Balancer("round_robin", ["a:1", "a:1", "b:2"]).targets == ("a:1", "b:2")
    with pytest.raises(ValueError):
        Balancer("weighted", TARGETS)
    with pytest.raises(ValueError):
        Balancer("round_robin", [])


def test_snapshot():
    clock = Clock()
    b = Balancer("least_conn", TARGETS[:2], down_secs=5, clock=clock)
    b.acquire(TARGETS[0])
    b.mark_failed(TARGETS[1])
    clock.now += 2
    assert b.snapshot() == [
        {"target": TARGETS[0], "active": 1, "down_secs": 0.0},
        {"target": TARGETS[1], "active": 0, "down_secs": 3.0},
    ]
