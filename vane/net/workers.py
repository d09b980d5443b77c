"""Connection greenlets kept between connections (one accept loop hands each new connection
to a waiting worker instead of spawning a greenlet for it).

A fresh greenlet costs its own frame stack (16 KiB mapped, page faults on first use,
unmapped again when it ends) and the bookkeeping of a spawn: for a short connection that is
a sizeable share of the whole. A worker that finished its task waits for the next one; at
most ``keep`` wait, and when none is waiting a new one is spawned, so the pool never queues
work and never limits concurrency.

A task that raises ends its worker: gevent reports the error as for any greenlet, and the
worker is not reused. So does a kill. A kill aimed at a task that has just ended (it is
delivered by the event loop later) lands in the worker while it waits, before any next
task can reach it: the worker ends, and a task handed to it meanwhile goes to a fresh one.
"""

from __future__ import annotations

from typing import Any, Callable

import gevent
from gevent import get_hub
from gevent.hub import Waiter

__all__ = ["WorkerPool"]


class WorkerPool:
    """Runs ``spawn(fn, *args)`` tasks in reused greenlets; owns the list of waiting workers."""

    def __init__(self, keep: int = 64) -> None:
        self.keep = keep
        self._idle: list[Waiter] = []  # LIFO: the most recently used worker (warm caches) first

    def spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in a waiting worker, or in a new one; returns at once."""
        if self._idle:
            get_hub().loop.run_callback(self._hand, self._idle.pop(), fn, args)
        else:
            gevent.spawn(self._work, fn, args)

    @property
    def waiting(self) -> int:
        return len(self._idle)

    # -- inside the loop and the workers ---------------------------------------------------

    def _hand(self, waiter: Waiter, fn: Callable[..., Any], args: tuple) -> None:
        if waiter.greenlet is not None:
            waiter.switch((fn, args))
        else:  # its worker was killed after it went back to waiting: a fresh one
            gevent.spawn(self._work, fn, args)

    def _work(self, fn: Callable[..., Any], args: tuple) -> None:
        idle = self._idle
        while True:
            fn(*args)
            fn = args = None  # nothing of the finished task stays referenced while waiting
            if len(idle) >= self.keep:
                return
            waiter = Waiter()
            idle.append(waiter)
            try:
                fn, args = waiter.get()
            except BaseException:  # killed while waiting
                if waiter in idle:
                    idle.remove(waiter)
                raise
