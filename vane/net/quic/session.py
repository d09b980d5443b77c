"""One QUIC connection over a UDP session, driven by its greenlet (no asyncio loop).

The listener keys sessions by client address, and short-header datagrams by the connection
IDs the sessions issued (so a connection survives a NAT rebinding or a migration; aioquic
validates the new path), and feeds each one's datagrams to its queue (bounded; excess is
dropped, as UDP allows). A short-header datagram for an ID no session here holds gets a
stateless reset whose token every worker derives alike (``ConnectionIds.reset_token``).
While more handshakes than ``QuicLimits.retry_threshold`` are in progress in this process, a
new client first proves its address with a Retry (RFC 9000 §8.1.2): a flood of Initials from
spoofed addresses then costs a small stateless answer each, not a handshake.

``QuicSession`` owns the aioquic ``QuicConnection`` of that session: the driver greenlet
(``handshake``, then ``run``) hands it the datagrams, fires its timer and sends what it has
to send; greenlets writing stream data call ``transmit`` themselves and ``wait_progress``
for acknowledgements when their stream has too much unacknowledged data in flight. Inbound
flow control is credited as the application consumes a stream's data (``held``), not as it
arrives, so a slow consumer slows the client.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable

from aioquic.asyncio.server import _encode_invalid_token_close
from aioquic.buffer import Buffer, BufferReadError
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import MAX_STREAM_DATA_FRAME_CAPACITY, QuicConnection
from aioquic.quic.packet import (
    QuicFrameType,
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.retry import QuicRetryTokenHandler
from gevent import getcurrent
from gevent.event import Event
from gevent.queue import Empty, Full

from vane.net.udp import ConnectionIds

from .certs import QuicCerts

__all__ = ["QuicLimits", "QuicSession"]

log = logging.getLogger("vane.quic")
logging.getLogger("quic").setLevel(logging.WARNING)   # aioquic logs every connection at INFO

SEND_BACKLOG = 512 * 1024   # unacknowledged bytes a stream may have in flight before its writer waits
_TICK = 1.0
RESETS_PER_SEC = 100        # stateless resets one process sends at most per second


class QuicLimits:
    """Per-connection QUIC limits, from the security floor."""

    __slots__ = ("handshake_timeout", "idle_timeout", "max_streams", "stream_window", "connection_window",
                 "retry_threshold")

    def __init__(self, handshake_timeout: float = 10.0, idle_timeout: float = 60.0, max_streams: int = 100,
                 stream_window: int = 256 * 1024, connection_window: int = 4 * 1024 * 1024,
                 retry_threshold: int = 100) -> None:
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.max_streams = max_streams
        self.stream_window = stream_window
        self.connection_window = connection_window
        self.retry_threshold = retry_threshold   # handshakes in progress before new clients get a Retry

    def configuration(self) -> QuicConfiguration:
        from aioquic.h3.connection import H3_ALPN
        return QuicConfiguration(is_client=False, alpn_protocols=list(H3_ALPN), idle_timeout=self.idle_timeout,
                                 max_stream_data=self.stream_window, max_data=self.connection_window)


class _ServerConnection(QuicConnection):
    """aioquic's connection with the certificate chosen by SNI and consumption-based credit."""

    def __init__(self, *, certs: QuicCerts, window: int, held: Callable[[int], int], ids: ConnectionIds | None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._certs = certs
        self._window = window
        self._held = held
        self._ids = ids
        if ids is not None:             # our first ID, before any packet carries it
            first = self._host_cids[0]
            first.cid = self.host_cid = self._local_initial_source_connection_id = ids.new_id()
        self._own_new_ids()

    def _replenish_connection_ids(self) -> None:
        super()._replenish_connection_ids()
        self._own_new_ids()

    def _own_new_ids(self) -> None:
        """The IDs not announced yet: made by the listener's ``ConnectionIds`` (so the kernel
        steers them to this worker), with stateless-reset tokens derived from the daemon's
        key rather than random, so that any worker can reset a connection it does not hold."""
        ids = self._ids
        for cid in self._host_cids:
            if not cid.was_sent:
                if ids is not None:
                    cid.cid = ids.new_id()
                cid.stateless_reset_token = ConnectionIds.reset_token(cid.cid)
            elif cid.sequence_number == 0:
                cid.stateless_reset_token = ConnectionIds.reset_token(cid.cid)

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        self._certs.configure(self.tls)

    def _write_stream_limits(self, builder: Any, space: Any, stream: Any) -> None:
        if stream.max_stream_data_local:
            want = stream.receiver.highest_offset - self._held(stream.stream_id) + self._window
            if want - stream.max_stream_data_local >= self._window // 4:
                stream.max_stream_data_local = want
        if stream.max_stream_data_local_sent != stream.max_stream_data_local:
            buf = builder.start_frame(QuicFrameType.MAX_STREAM_DATA, capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
                                      handler=self._on_max_stream_data_delivery, handler_args=(stream,))
            buf.push_uint_var(stream.stream_id)
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local


class QuicSession:
    """Owns one QUIC connection: datagrams in and out, its timer, and the greenlets waiting on it."""

    def __init__(self, udp: Any, sock: Any, quic: _ServerConnection, limits: QuicLimits) -> None:
        self.udp = udp
        self.sock = sock
        self.quic = quic
        self.limits = limits
        self.held: dict[int, int] = {}      # stream id -> bytes received but not consumed yet
        self.closed = False
        self.sni: str | None = None
        self.alpn: str | None = None
        self._early: list[Any] = []         # events that came with the end of the handshake
        self._driver: Any = None
        self._deadline = 0.0
        self._waiters: list[Event] = []

    @classmethod
    def accept(cls, udp: Any, sock: Any, certs: QuicCerts, limits: QuicLimits) -> "QuicSession | None":
        """A session for ``udp`` if its first datagram opens a QUIC connection; None otherwise
        (after a version negotiation packet, when the client offered a version we do not speak)."""
        config = limits.configuration()
        default = certs.for_name(None)      # replaced by the SNI's at ClientHello
        config.certificate, config.certificate_chain, config.private_key = default.certificate, default.chain, default.key
        try:
            header = pull_quic_header(Buffer(data=udp.first), host_cid_length=config.connection_id_length)
        except (ValueError, BufferReadError):
            return None
        if header.version is not None and header.version not in config.supported_versions:
            if header.packet_type == QuicPacketType.INITIAL or len(udp.first) >= 1200:
                _send(sock, encode_quic_version_negotiation(source_cid=header.destination_cid,
                                                            destination_cid=header.source_cid,
                                                            supported_versions=config.supported_versions),
                      udp.client)
            return None
        if header.packet_type != QuicPacketType.INITIAL or len(udp.first) < 1200:
            if header.version is None:      # a short header: a connection this process does not hold
                _stateless_reset(sock, udp, header.destination_cid)
            return None     # not the start of a connection
        odcid, retry_scid = header.destination_cid, None
        if header.token:                    # the answer to our Retry (vaned sends no NEW_TOKEN)
            try:
                odcid = _strangers.tokens.validate_token(address=udp.client, destination_cid=header.destination_cid,
                                                       token=header.token, now=time.monotonic())
            except ValueError:              # forged, expired or from another address (RFC 9000 §8.1.3)
                _send(sock, _encode_invalid_token_close(version=header.version, source_cid=header.destination_cid,
                                                        destination_cid=header.source_cid), udp.client)
                return None
            retry_scid = header.destination_cid
        elif _strangers.handshakes >= limits.retry_threshold:
            scid = udp.ids.new_id() if udp.ids is not None else os.urandom(config.connection_id_length)
            token = _strangers.tokens.create_token(address=udp.client, original_destination_connection_id=odcid,
                                                 retry_source_connection_id=scid, now=time.monotonic())
            _send(sock, encode_quic_retry(version=header.version, source_cid=scid, destination_cid=header.source_cid,
                                          original_destination_cid=odcid, retry_token=token), udp.client)
            return None
        session: QuicSession

        def held(stream_id: int) -> int:
            return session.held.get(stream_id, 0)

        quic = _ServerConnection(configuration=config, original_destination_connection_id=odcid,
                                 retry_source_connection_id=retry_scid, certs=certs, window=limits.stream_window,
                                 held=held, ids=udp.ids)
        bidi = quic._local_max_streams_bidi
        bidi.value = bidi.sent = limits.max_streams
        session = cls(udp, sock, quic, limits)
        udp.lingers = True      # a drain lets the connection finish on the listener's socket
        if udp.ids is not None:
            udp.ids.add(udp, quic.host_cid)
        return session

    # -- driving ---------------------------------------------------------------------------------

    def handshake(self, stop: Callable[[], bool] = lambda: False) -> bool:
        """Run until the handshake completes (True) or fails, times out or ``stop()`` says
        the daemon is draining (False)."""
        self._driver = getcurrent()
        done: list[bool] = []

        def on_event(event: Any) -> None:
            if isinstance(event, events.HandshakeCompleted):
                self.alpn = event.alpn_protocol
                self.sni = getattr(self.quic.tls, "sni", None)
                done.append(True)
            elif not isinstance(event, (events.ProtocolNegotiated, events.ConnectionIdIssued,
                                        events.ConnectionIdRetired)):
                self._early.append(event)

        deadline = time.monotonic() + self.limits.handshake_timeout
        _strangers.handshakes += 1
        try:
            self._receive(self.udp.first, on_event)
            self.transmit()
            while not done and not self.closed:
                if time.monotonic() >= deadline or stop():
                    log.debug("quic: handshake with %s timed out or cut by a drain", self.udp.client)
                    self.quic.close(error_code=0x0, reason_phrase="handshake timeout")
                    self.transmit()
                    return False
                self._step(on_event, deadline)
            return bool(done) and not self.closed
        finally:
            _strangers.handshakes -= 1

    def run(self, on_event: Callable[[Any], None], stop: Callable[[], bool]) -> None:
        """Drive the connection until it is terminated, or ``stop()`` says it is done."""
        self._driver = getcurrent()
        early, self._early = self._early, []
        for event in early:
            on_event(event)
        self.transmit()
        while not self.closed and not stop():
            self._step(on_event, None)

    def _step(self, on_event: Callable[[Any], None], deadline: float | None) -> None:
        now = time.monotonic()
        timer = self.quic.get_timer()
        until = now + _TICK if timer is None else min(timer, now + _TICK)
        if deadline is not None:
            until = min(until, deadline)
        self._deadline = until
        try:
            data = self.udp.queue.get(timeout=max(until - now, 0.0))
        except Empty:
            data = b""
        if data is None or self.udp.closed:      # the listener stopped
            self._terminate()
            return
        if data:
            self._receive(data, on_event)
            while True:                         # what else already arrived, in one go
                try:
                    more = self.udp.queue.get_nowait()
                except Empty:
                    break
                if more is None:
                    self._terminate()
                    return
                if more:
                    self._receive(more, on_event)
            self._follow_peer()
        timer = self.quic.get_timer()
        if timer is not None and time.monotonic() >= timer:
            self.quic.handle_timer(time.monotonic())
            self._events(on_event)
        self.transmit()
        self._notify()

    def _receive(self, data: bytes | tuple[bytes, tuple], on_event: Callable[[Any], None]) -> None:
        """One queued datagram: bytes from the session's address, or ``(bytes, address)``
        routed here by its connection ID from another one."""
        if data.__class__ is tuple:
            data, addr = data
        else:
            addr = self.udp.client
        self.udp.counters.up += len(data)
        self.quic.receive_datagram(data, addr, time.monotonic())
        self._events(on_event)

    def _follow_peer(self) -> None:
        """The client's address changed (aioquic promoted a new path): the session moves
        there in the listener's table."""
        peer = self.quic.get_peer_address()
        udp = self.udp
        if peer is not None and peer != udp.client and udp.ids is not None:
            log.debug("quic: %s now sends from %s", udp.client, peer)
            udp.ids.move(udp, peer)

    def _events(self, on_event: Callable[[Any], None]) -> None:
        quic = self.quic
        ids = self.udp.ids
        while (event := quic.next_event()) is not None:
            cls = event.__class__
            if cls is events.ConnectionIdIssued:
                if ids is not None:
                    ids.add(self.udp, event.connection_id)
            elif cls is events.ConnectionIdRetired:
                if ids is not None:
                    ids.remove(self.udp, event.connection_id)
            elif cls is events.ConnectionTerminated:
                self.closed = True
            on_event(event)

    def _terminate(self) -> None:
        self.closed = True
        self._notify()

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for ev in waiters:
            ev.set()

    # -- for stream writers ----------------------------------------------------------------------

    def transmit(self) -> None:
        """Send what the connection has to send; wake the driver if its timer moved earlier."""
        sock = self.sock
        counters = self.udp.counters
        for data, addr in self.quic.datagrams_to_send(time.monotonic()):
            try:
                sock.sendto(data, addr)
            except OSError:
                continue        # a full socket buffer is a lost packet: QUIC recovers
            counters.down += len(data)
        if getcurrent() is not self._driver:
            timer = self.quic.get_timer()
            if timer is not None and timer < self._deadline:
                try:
                    self.udp.queue.put_nowait(b"")
                except Full:
                    pass        # the driver has datagrams to handle: it wakes anyway

    def backlog(self, stream_id: int) -> int:
        """Bytes written to the stream and not acknowledged yet."""
        stream = self.quic._streams.get(stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        return sender._buffer_stop - sender._buffer_start

    def wait_progress(self, timeout: float) -> bool:
        """Wait until the driver handled datagrams or a timer (False after ``timeout``)."""
        if self.closed:
            return True
        ev = Event()
        self._waiters.append(ev)
        return ev.wait(timeout)

    def close(self, code: int = 0, reason: str = "") -> None:
        if not self.closed:
            self.quic.close(error_code=code, reason_phrase=reason)
            self.transmit()


class _Strangers:
    """What this process spends on datagrams that are not a connection of its own yet: the
    handshakes in progress (past ``QuicLimits.retry_threshold``, new clients get a Retry), the
    key of its Retry tokens (made on first use; a retried Initial comes from the same address,
    hence to the same worker), and this second's budget of stateless resets."""

    __slots__ = ("handshakes", "_tokens", "_second", "_resets_left")

    def __init__(self) -> None:
        self.handshakes = 0
        self._tokens: QuicRetryTokenHandler | None = None
        self._second = 0
        self._resets_left = RESETS_PER_SEC

    @property
    def tokens(self) -> QuicRetryTokenHandler:
        if self._tokens is None:
            self._tokens = QuicRetryTokenHandler()
        return self._tokens

    def may_reset(self) -> bool:
        """One stateless reset more this second?"""
        now = int(time.monotonic())
        if now != self._second:
            self._second, self._resets_left = now, RESETS_PER_SEC
        if self._resets_left <= 0:
            return False
        self._resets_left -= 1
        return True


_strangers = _Strangers()


def _send(sock: Any, data: bytes, addr: tuple) -> None:
    """A datagram that answers no connection: lost if the socket's buffer is full, as UDP allows."""
    try:
        sock.sendto(data, addr)
    except OSError:
        pass


def _stateless_reset(sock: Any, udp: Any, cid: bytes) -> None:
    """Answer a short-header datagram for connection ID ``cid``, which this process does not
    hold, with a stateless reset (RFC 9000 §10.3): shorter than the datagram (no
    amplification, no loop between two endpoints), at most 43 bytes, and rate-limited."""
    data = udp.first
    if udp.ids is None or len(data) < 22 or not _strangers.may_reset():
        return
    size = min(len(data) - 1, 43)
    head = os.urandom(size - 16)
    _send(sock, bytes([0x40 | (head[0] & 0x3F)]) + head[1:] + ConnectionIds.reset_token(cid), udp.client)
