"""Connection slots and the accept loop shared by the management servers.

A server owns a bounded table of its connections (``Slots``), oldest first, each in one
state: ``pending`` (HTTP: no authenticated request yet), ``idle`` (waiting for the next
request), ``busy`` (answering one) or ``stream`` (a ``tail_*`` stream owns it). Before a new
connection is admitted, ``make_room`` closes the oldest pending connection past the pending
cap and, when the table is full, the oldest pending or idle one: a connection that only
occupies a slot never locks out a client with something to ask. Busy and streaming
connections are never closed to make room (streams have their own cap).

``accept_loop`` accepts until the listening socket closes. When the process is out of file
descriptors it spends one from the ``FdReserve`` on the waiting connection; otherwise it
backs off and logs at most once per interval.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from typing import Any, Callable

import gevent
from gevent.socket import wait_read

from vane.mgmt.fds import FD_ERRORS, FdReserve
from vane.observe.logging import RateLimitedLogger

__all__ = ["BUSY", "IDLE", "PENDING", "STREAM", "Slot", "Slots", "accept_loop"]

log = logging.getLogger("vane.mgmt")

PENDING, IDLE, BUSY, STREAM = "pending", "idle", "busy", "stream"

ACCEPT_LOG_INTERVAL = 10.0
BACKOFF_MIN, BACKOFF_MAX = 0.05, 1.0


class Slot:
    """One admitted connection: its socket, the greenlet serving it, its state and age."""

    __slots__ = ("sock", "greenlet", "state", "opened")

    def __init__(self, sock: Any, state: str) -> None:
        self.sock = sock
        self.greenlet: gevent.Greenlet | None = None
        self.state = state
        self.opened = time.monotonic()


class Slots:
    """The open connections of one management server, bounded by ``capacity`` in all and
    ``max_pending`` in state ``pending``; insertion order is age."""

    def __init__(self, capacity: int, max_pending: int | None = None) -> None:
        self.capacity = capacity
        self.max_pending = capacity if max_pending is None else max_pending
        self._table: dict[Slot, None] = {}
        self.evicted = 0  # connections closed to make room, for tests and stats

    def __len__(self) -> int:
        return len(self._table)

    def __iter__(self):
        return iter(list(self._table))

    def count(self, state: str) -> int:
        return sum(1 for slot in self._table if slot.state == state)

    def make_room(self) -> bool:
        """Close connections so one more fits; False when every slot is busy or streaming."""
        if self.count(PENDING) >= self.max_pending:
            self._evict((PENDING,))
        if len(self._table) < self.capacity:
            return True
        return self._evict((PENDING, IDLE))

    def add(self, sock: Any, state: str) -> Slot:
        slot = Slot(sock, state)
        self._table[slot] = None
        return slot

    def discard(self, slot: Slot) -> None:
        self._table.pop(slot, None)

    def close_all(self, states: tuple[str, ...] | None = None) -> None:
        """Close the connections in ``states`` (all when None) now."""
        for slot in list(self._table):
            if states is None or slot.state in states:
                self._close(slot)

    def _evict(self, states: tuple[str, ...]) -> bool:
        for slot in self._table:  # oldest first
            if slot.state in states:
                self._close(slot)
                self.evicted += 1
                return True
        return False

    def _close(self, slot: Slot) -> None:
        self.discard(slot)
        try:
            slot.sock.close()  # frees the descriptor now; a read waiting on it is cancelled
        except OSError:
            pass
        if slot.greenlet is not None and slot.greenlet is not gevent.getcurrent():
            slot.greenlet.kill(block=False)


def _accept_spare(listener: Any, reserve: FdReserve) -> tuple[Any, Any] | None:
    """Out of descriptors: once a connection is queued, accept it on a spare descriptor.

    The kernel fails ``accept`` with EMFILE before it looks for a queued connection, so wait
    until the listening socket is readable first. None when no spare is left (or nothing
    was queued after all)."""
    if not len(reserve):
        return None
    try:
        wait_read(listener.fileno())
    except OSError:
        return None  # closed meanwhile
    if not reserve.release():
        return None
    listener.settimeout(0.0)
    try:
        return listener.accept()
    except OSError:
        reserve.refill()
        return None
    finally:
        listener.settimeout(None)


def accept_loop(listener: Any, admit: Callable[[Any, Any], None], reserve: FdReserve, what: str) -> None:
    """Accept on ``listener`` until it is closed and pass each connection to ``admit``
    (which must not block). ``what`` names the server in log lines."""
    failures = RateLimitedLogger(log, interval=ACCEPT_LOG_INTERVAL, max_keys=8)
    backoff = 0.0
    while True:
        try:
            conn, addr = listener.accept()
        except OSError as e:
            if e.errno == errno.ECONNABORTED:
                continue
            got = _accept_spare(listener, reserve) if e.errno in FD_ERRORS else None
            if got is None:
                if listener.fileno() < 0:
                    return  # closed by stop()
                failures.log(e.errno, logging.WARNING, "%s: accept failed: %s; backing off", what, e.strerror or e)
                backoff = min(backoff * 2, BACKOFF_MAX) if backoff else BACKOFF_MIN
                gevent.sleep(backoff)
                continue
            conn, addr = got
        backoff = 0.0
        try:
            admit(conn, addr)
        except Exception:  # noqa: BLE001 - the accept loop must outlive any one connection
            log.exception("%s: could not start serving a connection", what)
            _close_quietly(conn)
        gevent.sleep(0)  # let the new connection read what it already sent before the next accept


def _close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
