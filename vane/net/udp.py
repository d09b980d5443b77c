"""UDP sessions: one per client address, fed by the listener, relayed to one upstream.

The listener owns the bounded session table and hands each new client's datagrams to its
session queue (bounded: excess datagrams are dropped, as UDP allows). ``relay_session`` runs
in the session's greenlet once the flow chose a target, and ends after ``idle`` seconds
without a datagram either way.

A QUIC connection outlives its client's address (a NAT rebinding, a migration): its sessions
register the connection IDs they issued in the listener's ``ConnectionIds``, and a
short-header datagram carrying one reaches its session whatever address it comes from.
"""

from __future__ import annotations

import hmac
import os
import time
from typing import Any

import gevent
from gevent.queue import Empty, Full, Queue

from .tunnel import Counters

MAX_DATAGRAM = 65535
QUEUE_DATAGRAMS = 256


class UdpSession:
    """One client's datagrams on a UDP listener: the queue the listener fills and the
    session's greenlet empties, its counters, and the connection IDs it answers to (QUIC)."""

    __slots__ = ("client", "sock", "first", "queue", "last", "counters", "dropped", "closed", "lingers",
                 "ids", "cids")

    def __init__(self, client: tuple, sock: Any, first: bytes, counters: Counters | None = None,
                 ids: "ConnectionIds | None" = None) -> None:
        self.client = client          # the client's address
        self.sock = sock              # the listener's socket (replies go out through it)
        self.first = first
        self.queue: Queue = Queue(QUEUE_DATAGRAMS)
        self.last = time.monotonic()
        self.counters = counters if counters is not None else Counters()
        self.dropped = 0
        self.closed = False
        self.lingers = False          # keeps the listener's socket open after it stops (QUIC)
        self.ids = ids                # the listener's connection-ID index (None: not routed by ID)
        self.cids: list[bytes] = []   # the IDs of this session in it

    def feed(self, data: bytes) -> None:
        """Called by the listener for every later datagram of this client."""
        try:
            self.queue.put_nowait(data)
        except Full:
            self.dropped += 1

    def feed_from(self, data: bytes, client: tuple) -> None:
        """A datagram routed here by its connection ID from another address than ``client``:
        queued with its address, ``(data, address)``."""
        try:
            self.queue.put_nowait((data, client))
        except Full:
            self.dropped += 1

    def end(self) -> None:
        """The listener stopped: no datagram comes in and no reply can go out, so the relay ends now."""
        self.closed = True
        try:
            self.queue.put_nowait(None)
        except Full:
            pass  # the relay sees ``closed`` after the next queued datagram


class ConnectionIds:
    """One UDP listener's index of the QUIC connection IDs its sessions issued, and the key
    their stateless-reset tokens derive from.

    Bounded by the sessions: a connection holds at most a handful of IDs at a time (8 with
    aioquic) and takes them out when it ends. The key is made once per daemon start, before
    workers are forked, so every worker derives the same token for an ID: a datagram for a
    connection this process does not know (it lives in another worker, or ended) can be
    answered with a stateless reset the client recognises (RFC 9000 §10.3).
    """

    __slots__ = ("length", "by_id", "sessions", "steer")

    KEY = os.urandom(32)

    def __init__(self, sessions: dict[tuple, UdpSession], length: int = 8) -> None:
        self.length = length            # of the IDs this daemon issues (aioquic's default)
        self.by_id: dict[bytes, UdpSession] = {}
        self.sessions = sessions        # the listener's sessions by client address
        # (worker, workers) when the kernel hands a datagram to the worker its destination
        # ID's first byte names (mod workers): the IDs issued here must name this worker
        self.steer: tuple[int, int] | None = None

    def new_id(self) -> bytes:
        """A fresh connection ID for a session of this listener (random, and leading the
        kernel back to this worker when it steers)."""
        cid = bytearray(os.urandom(self.length))
        if self.steer is not None:
            worker, workers = self.steer
            first = cid[0] - cid[0] % workers + worker
            cid[0] = first if first < 256 else first - workers
        return bytes(cid)

    def move(self, session: UdpSession, client: tuple) -> None:
        """A session's client now sends from ``client`` (its connection migrated): it is found
        at that address, and the old one is free for a new client."""
        sessions = self.sessions
        if sessions.get(session.client) is session:
            del sessions[session.client]
        session.client = client
        if client not in sessions:
            sessions[client] = session

    @classmethod
    def reset_token(cls, cid: bytes) -> bytes:
        """The stateless-reset token of connection ID ``cid``."""
        return hmac.digest(cls.KEY, cid, "sha256")[:16]

    def short_header_id(self, data: bytes) -> bytes | None:
        """The destination connection ID of a short-header (1-RTT) packet; None for a
        long-header one or a datagram too short to be either."""
        if len(data) <= self.length or data[0] & 0xC0 != 0x40:
            return None
        return data[1:1 + self.length]

    def session_of(self, data: bytes) -> UdpSession | None:
        """The live session a short-header datagram's connection ID belongs to."""
        cid = self.short_header_id(data)
        if cid is None:
            return None
        session = self.by_id.get(cid)
        return session if session is not None and not session.closed else None

    def add(self, session: UdpSession, cid: bytes) -> None:
        if len(cid) == self.length and cid not in self.by_id:
            self.by_id[cid] = session
            session.cids.append(cid)

    def remove(self, session: UdpSession, cid: bytes) -> None:
        if self.by_id.get(cid) is session:
            del self.by_id[cid]
            session.cids.remove(cid)

    def drop(self, session: UdpSession) -> None:
        """Forget every ID of a session that ended."""
        by_id = self.by_id
        for cid in session.cids:
            if by_id.get(cid) is session:
                del by_id[cid]
        session.cids = []


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
