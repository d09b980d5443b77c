"""Reused connection greenlets: reuse, the bound on waiting workers, failures and kills."""

from __future__ import annotations

import gevent
import pytest
from gevent.event import Event

from vane.net.workers import WorkerPool

pytestmark = pytest.mark.timeout(10)


def run_in(pool: WorkerPool, fn=None) -> tuple[Event, list]:
    """Spawn a task that records the greenlet it ran in; returns (done, [greenlet])."""
    done, where = Event(), []

    def task() -> None:
        where.append(gevent.getcurrent())
        if fn is not None:
            fn()
        done.set()

    pool.spawn(task)
    return done, where


def test_a_worker_is_reused_for_the_next_task():
    pool = WorkerPool(keep=4)
    first_done, first = run_in(pool)
    assert first_done.wait(2)
    gevent.sleep(0)  # the worker goes back to waiting
    assert pool.waiting == 1
    second_done, second = run_in(pool)
    assert second_done.wait(2)
    assert second[0] is first[0]


def test_busy_workers_do_not_queue_tasks():
    pool = WorkerPool(keep=4)
    release = Event()
    runs = [run_in(pool, release.wait) for _ in range(3)]
    gevent.sleep(0.05)
    assert len({where[0] for _, where in runs}) == 3  # all three run at once, each in its own
    release.set()
    assert all(done.wait(2) for done, _ in runs)


def test_no_more_than_keep_workers_wait():
    pool = WorkerPool(keep=2)
    release = Event()
    runs = [run_in(pool, release.wait) for _ in range(5)]
    gevent.sleep(0.01)
    release.set()
    assert all(done.wait(2) for done, _ in runs)
    gevent.sleep(0.05)
    assert pool.waiting == 2
    assert sum(not where[0].dead for _, where in runs) == 2


def test_a_failing_task_ends_its_worker(capsys):
    pool = WorkerPool(keep=4)

    def fail() -> None:
        raise RuntimeError("task bug")

    _, where = run_in(pool, fail)
    gevent.sleep(0.05)
    assert where[0].dead and isinstance(where[0].exception, RuntimeError)
    assert pool.waiting == 0  # never reused after a failure
    done, again = run_in(pool)
    assert done.wait(2) and again[0] is not where[0]


def test_a_kill_aimed_at_a_finished_task_never_reaches_the_next_one():
    """The kill of a connection is delivered by the event loop, later. If its task ends first
    and the worker is handed another task before the kill arrives, the kill must end the
    worker while it waits and the other task must run in a fresh greenlet, untouched."""
    pool = WorkerPool(keep=4)
    go_first, go_relay = Event(), Event()
    _, first = run_in(pool, go_first.wait)
    next_done, nxt = Event(), []

    def next_task() -> None:
        nxt.append(gevent.getcurrent())
        gevent.sleep(0.05)  # a kill landing here would end it
        next_done.set()

    def relay_task() -> None:  # in another worker: hands out the next task once the first worker waits
        go_relay.wait()
        pool.spawn(next_task)

    pool.spawn(relay_task)
    gevent.sleep(0.01)
    worker = first[0]
    go_first.set()            # the first task ends at the loop's next turn ...
    go_relay.set()            # ... then the other worker hands out the next task ...
    worker.kill(block=False)  # ... and only then the kill meant for the first task arrives
    assert next_done.wait(2)
    assert worker.dead
    assert nxt[0] is not worker


def test_a_kill_while_waiting_ends_the_worker():
    pool = WorkerPool(keep=4)
    done, where = run_in(pool)
    assert done.wait(2)
    gevent.sleep(0)
    worker = where[0]
    worker.kill(timeout=2)
    assert worker.dead and pool.waiting == 0
    done, again = run_in(pool)
    assert done.wait(2) and again[0] is not worker
