"""Parking idle keep-alive connections without a greenlet.

A greenlet costs about 8 KiB even while it waits, so 10,000 idle keep-alive connections
would cost 80 MiB in stacks alone. Between requests an HTTP/1 connection with nothing
buffered is parked instead: its greenlet ends, and a read watcher plus a timer on the event
loop wait for it. The next request (or the idle timeout, or a drain) starts a fresh
greenlet that picks up where the old one stopped.
"""

from __future__ import annotations

from typing import Callable

import gevent
from gevent import get_hub

READ = 1


class Parked:
    __slots__ = ("key", "_io", "_timer", "_ready", "_expired", "_owner")

    def __init__(self, owner: "Parking", key: object, fd: int, timeout: float,
                 ready: Callable[[], None], expired: Callable[[], None]) -> None:
        loop = get_hub().loop
        self.key = key
        self._owner = owner
        self._ready = ready
        self._expired = expired
        self._io = loop.io(fd, READ)
        self._timer = loop.timer(timeout)
        self._io.start(self._wake, True)
        self._timer.start(self._wake, False)

    def _wake(self, readable: bool) -> None:
        """Event-loop callback: stop waiting and continue in a new greenlet."""
        self._stop()
        gevent.spawn(self._ready if readable else self._expired)

    def _stop(self) -> None:
        self._io.stop()
        self._timer.stop()
        self._io.close()
        self._timer.close()
        self._owner.parked.pop(self.key, None)

    def close(self) -> None:
        """Give up waiting now (drain, shutdown): the connection ends as on idle timeout."""
        if self.key in self._owner.parked:
            self._stop()
            gevent.spawn(self._expired)


class Parking:
    """The parked connections of one daemon (bounded by the connection limit)."""

    def __init__(self) -> None:
        self.parked: dict[object, Parked] = {}

    def park(self, key: object, fd: int, timeout: float, ready: Callable[[], None],
             expired: Callable[[], None]) -> Parked:
        parked = self.parked[key] = Parked(self, key, fd, timeout, ready, expired)
        return parked

    def close_all(self) -> None:
        for parked in list(self.parked.values()):
            parked.close()

    def __len__(self) -> int:
        return len(self.parked)
