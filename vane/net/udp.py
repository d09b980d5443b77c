"""UDP sessions: one per client address, fed by the listener, relayed to one upstream.

The listener owns the bounded session table and hands each new client's datagrams to its
session queue (bounded: excess datagrams are dropped, as UDP allows). ``relay_session`` runs
in the session's greenlet once the flow chose a target, and ends after ``idle`` seconds
without a datagram either way.
"""

from __future__ import annotations

import time
from typing import Any

import gevent
from gevent.queue import Empty, Full, Queue

from .tunnel import Counters

MAX_DATAGRAM = 65535
QUEUE_DATAGRAMS = 256


class UdpSession:
    __slots__ = ("client", "sock", "first", "queue", "last", "counters", "dropped", "closed", "lingers")

    def __init__(self, client: tuple, sock: Any, first: bytes, counters: Counters | None = None) -> None:
        self.client = client          # the client's address
        self.sock = sock              # the listener's socket (replies go out through it)
        self.first = first
        self.queue: Queue = Queue(QUEUE_DATAGRAMS)
        self.last = time.monotonic()
        self.counters = counters if counters is not None else Counters()
        self.dropped = 0
        self.closed = False
        self.lingers = False          # keeps the listener's socket open after it stops (QUIC)

    def feed(self, data: bytes) -> None:
        """Called by the listener for every later datagram of this client."""
        try:
            self.queue.put_nowait(data)
        except Full:
            self.dropped += 1

    def end(self) -> None:
        """The listener stopped: no datagram comes in and no reply can go out, so the relay ends now."""
        self.closed = True
        try:
            self.queue.put_nowait(None)
        except Full:
            pass  # the relay sees ``closed`` after the next queued datagram


def relay_session(session: UdpSession, upstream: Any, idle: float, prefix: bytes = b"") -> None:
    """Relay datagrams both ways until ``idle`` seconds pass with no traffic.

    ``prefix`` (a PROXY protocol v2 header) goes in front of every datagram sent upstream."""
    counters = session.counters

    def downstream() -> None:
        try:
            while True:
                data = upstream.recv(MAX_DATAGRAM)
                session.last = time.monotonic()
                counters.down += len(data)
                session.sock.sendto(data, session.client)
        except OSError:
            pass  # the upstream refused (ICMP unreachable) or the listener's socket closed: the session ends

    reader = gevent.spawn(downstream)
    try:
        upstream.send(prefix + session.first if prefix else session.first)
        counters.up += len(session.first)
        while not reader.dead and not session.closed:
            wait = session.last + idle - time.monotonic()
            if wait <= 0:
                break
            try:
                data = session.queue.get(timeout=min(wait, 1.0))
            except Empty:
                continue
            if data is None:  # end() by the listener
                break
            session.last = time.monotonic()
            counters.up += len(data)
            upstream.send(prefix + data if prefix else data)
    except OSError:
        pass
    finally:
        reader.kill(block=False)
        session.closed = True
        upstream.close()
