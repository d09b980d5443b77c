"""Shared limits across real processes: caps hold for the daemon, a dead worker's share is
given back, and the tables stay bounded whatever keys clients send."""

from __future__ import annotations

import os
import signal

from gevent.os import make_nonblocking, nb_read

from vane.daemon.shm import SharedLimits


def _in_child(fn) -> int:
    """Run ``fn`` in a forked process; its int result comes back through a pipe (read
    cooperatively: gevent closes a descriptor on the hub's next turn)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.write(w, str(fn()).encode())
        finally:
            os._exit(0)
    os.close(w)
    make_nonblocking(r)
    data = b""
    while chunk := nb_read(r, 64):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return int(data)


def test_per_ip_cap_holds_across_processes():
    limits = SharedLimits(workers=2, max_connections=1000)
    conns = limits.conns

    def worker1() -> int:
        return sum(conns.acquire(1, "10.0.0.1", 1000, 5) is None for _ in range(10))

    assert sum(conns.acquire(0, "10.0.0.1", 1000, 5) is None for _ in range(3)) == 3
    assert _in_child(worker1) == 2                      # the other process sees the first's three
    assert conns.acquire(0, "10.0.0.1", 1000, 5) == "max_connections_per_ip"
    assert conns.acquire(0, "10.0.0.2", 1000, 5) is None  # another client is not affected
    assert conns.per_ip("10.0.0.1") == 5
    conns.release(0, "10.0.0.1")
    assert conns.acquire(0, "10.0.0.1", 1000, 5) is None


def test_total_cap_holds_across_processes():
    limits = SharedLimits(workers=2, max_connections=64)
    conns = limits.conns
    assert all(conns.acquire(0, f"10.1.0.{i}", 8, 100) is None for i in range(5))
    assert _in_child(lambda: sum(conns.acquire(1, f"10.2.0.{i}", 8, 100) is None for i in range(10))) == 3
    assert conns.acquire(0, "10.3.0.1", 8, 100) == "max_connections"
    assert conns.active() == [5, 3]


def test_dead_worker_share_is_cleared():
    limits = SharedLimits(workers=2, max_connections=100)
    conns = limits.conns
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        for _ in range(4):
            conns.acquire(1, "10.9.9.9", 100, 4)
        os.write(w, b"x")
        signal.pause()
    os.read(r, 1)
    os.kill(pid, signal.SIGKILL)   # killed while it "holds" four connections
    os.waitpid(pid, 0)
    assert conns.acquire(0, "10.9.9.9", 100, 4) == "max_connections_per_ip"
    conns.clear_worker(1)
    assert conns.per_ip("10.9.9.9") == 0
    assert conns.active() == [0, 0]
    assert conns.acquire(0, "10.9.9.9", 100, 4) is None


def test_killed_while_holding_a_lock_does_not_wedge():
    limits = SharedLimits(workers=2, max_connections=100)
    conns = limits.conns
    stripe = conns.table.stripe(hash("10.0.0.7") or 1)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        limits.region.lock(stripe)
        os.write(w, b"x")
        signal.pause()
    os.read(r, 1)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert conns.acquire(0, "10.0.0.7", 100, 4) is None   # the kernel released the dead lock


def test_handshake_windows_across_processes():
    limits = SharedLimits(workers=2, max_connections=100)
    hs = limits.handshakes
    assert all(hs.hit("10.0.0.1", 100.0, 3) for _ in range(2))
    assert _in_child(lambda: int(hs.hit("10.0.0.1", 100.2, 3))) == 1
    assert not hs.hit("10.0.0.1", 100.5, 3)
    assert hs.hit("10.0.0.1", 101.0, 3)                 # a new window


def test_token_buckets_across_processes():
    limits = SharedLimits(workers=2, max_connections=100)
    b = limits.buckets
    assert b.take("k", 1.0, 2.0, 10.0) == (True, 1.0)
    assert _in_child(lambda: int(b.take("k", 1.0, 2.0, 10.0)[0])) == 1
    assert b.take("k", 1.0, 2.0, 10.0)[0] is False
    assert b.take("k", 1.0, 2.0, 11.0)[0] is True     # refilled one token in one second


def test_tables_are_bounded_by_construction():
    limits = SharedLimits(workers=2, max_connections=64, handshake_keys=512, bucket_keys=512)
    size = limits.bytes
    for i in range(20000):                              # far more keys than slots
        limits.buckets.take(f"client-{i}", 1.0, 1.0, float(i))
        limits.handshakes.hit(f"ip-{i}", float(i), 10)
    assert limits.bytes == size
    assert limits.buckets.take("client-19999", 1.0, 1.0, 19999.0)[0] is False  # recent keys kept
