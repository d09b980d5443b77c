"""Listeners (DESIGN.md §7; seed 002): one per (transport, address), each with its own socket.

Bind with ``SO_REUSEADDR`` (``SO_REUSEPORT`` only for the per-worker sockets of a UDP listener), IPv6 sockets v6-only, retry with
exponential backoff up to a number of attempts, then give up alone: siblings go on. A socket
handed over by systemd (``LISTEN_FDS``) is used as is. TCP listeners hand each accepted
connection to a greenlet of their own (a worker reused from the last connections, see
``vane.net.workers``); UDP listeners keep a bounded table of client sessions.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import struct
import time
from typing import Any, Callable

import gevent
from gevent import socket as gsocket
from gevent.event import Event

from .sockets import accept_raw
from .udp import MAX_DATAGRAM, ConnectionIds, UdpSession
from .workers import WorkerPool

log = logging.getLogger("vane.listener")

PERMANENT_BIND_ERRORS = {errno.EAFNOSUPPORT, errno.EACCES, errno.EPROTONOSUPPORT}  # no address yet (EADDRNOTAVAIL) retries
RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
BACKLOG = 1024
ACCEPT_LOG_INTERVAL = 10.0  # seconds between two "accept failed" lines of one listener
GATE_HOLD = 5               # milliseconds a crowded worker leaves a new connection to the others
GATE_STALLS = 20            # holds in a row after which the others count as not accepting
GATE_PAUSE = 1.0            # seconds it then accepts without waiting

# (listener, connection, peer): a TCP connection comes as the bare kernel socket (``accept_raw``)
Handler = Callable[["Listener", Any, tuple], None]

connection_workers = WorkerPool(keep=64)  # shared by every TCP listener of the process


class Listener:
    """Owns one accept socket and its accept loop. ``addr`` is a compile.ListenAddr.

    Without a ``handler`` it only binds: a master holds the socket for its workers
    (``socket_for``). Workers that share one TCP socket are all woken for each connection and
    the first to call ``accept`` wins, which favours whichever is idle at that instant; with
    ``crowded`` a worker that holds clearly more connections than another waits up to
    ``GATE_HOLD`` ms before its next accept, so that the others take it; after ``GATE_STALLS``
    holds in a row that ran out (a worker that is starting, stuck or gone) it accepts without
    waiting for ``GATE_PAUSE`` seconds. A UDP listener bound for ``group`` workers opens one socket per worker
    with ``SO_REUSEPORT``: the kernel then sends every datagram of one client address to the
    same socket, hence to the same worker. With ``quic`` (the listener serves HTTP/3) the
    kernel steers by QUIC connection ID instead (``steer_by_connection_id``): a connection's
    datagrams reach the worker that issued its IDs whatever address they come from."""

    def __init__(self, addr: Any, handler: Handler | None, settings: Any, inherited: socket.socket | None = None,
                 max_udp_sessions: int = 4096, group: int = 0, announce: bool = True,
                 crowded: Callable[[], bool] | None = None, quic: bool = False) -> None:
        self.addr = addr
        self.quic = quic
        self.steered = False          # the group's sockets are chosen by connection ID (see above)
        self.label = str(addr)       # "tcp 0.0.0.0:443", shared by every connection's records
        self.handler = handler
        self.settings = settings
        self.sock: Any = inherited
        self.inherited = inherited is not None
        self.state = "pending"
        self.bind_attempts = 0
        self.last_error: str | None = None
        self.bound = Event()
        self.accepted = 0
        self.sessions: dict[tuple, UdpSession] = {}
        self.ids = ConnectionIds(self.sessions)  # QUIC sessions' connection IDs: they outlive an address
        self.max_udp_sessions = max_udp_sessions
        self.udp_dropped = 0
        self.group = group
        self.announce = announce     # log "listening on"; a worker's copy of a master's socket does not
        self.group_socks: list[Any] = []
        self.nodelay = False          # accepted sockets inherit TCP_NODELAY from the listening one
        self.local: tuple | None = None  # the local address of every accepted connection, if fixed
        self.crowded = crowded       # a worker sharing the socket: True while it holds too many
        self._loop: gevent.Greenlet | None = None

    def __repr__(self) -> str:
        return f"<Listener {self.addr} {self.state}>"

    def to_dict(self) -> dict:
        return {"address": self.addr.hostport, "transport": self.addr.transport, "state": self.state,
                "bind_attempts": self.bind_attempts, "last_error": self.last_error,
                "socket_activated": self.inherited, "accepted": self.accepted,
                **({"sessions": len(self.sessions)} if self.addr.transport == "udp" else {})}

    def start(self) -> None:
        self._loop = gevent.spawn(self._run)

    def retry(self) -> bool:
        """Start binding again if this listener gave up (a reload asks); True if it did."""
        if self.state != "failed" or self.inherited:
            return False
        self.bind_attempts = 0
        self.state = "pending"
        self.start()
        return True

    def settle(self, timeout: float) -> None:
        """Wait until the first bind attempt is over (bound, or failed once), up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.state in ("pending", "binding") and not self.bind_attempts and time.monotonic() < deadline:
            gevent.sleep(0.01)

    def steer(self) -> None:
        """Have the kernel steer this UDP group's datagrams by QUIC connection ID."""
        if self.group_socks and not self.steered:
            self.steered = steer_by_connection_id(self.group_socks[0], len(self.group_socks), str(self.addr))

    def unsteer(self) -> None:
        """The port no longer serves HTTP/3 (a reload): the address decides again, as for
        any UDP session (the workers' IDs may keep naming them: nothing reads them now)."""
        if self.steered and self.group_socks:
            try:
                self.group_socks[0].setsockopt(socket.SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, 0)
                self.steered = False
            except OSError as exc:
                log.warning("listener %s: cannot stop steering by QUIC connection ID (%s)", self.addr, exc,
                            extra={"listener": str(self.addr)})

    def socket_for(self, worker: int) -> Any:
        """The bound socket worker number ``worker`` accepts on (None: none for it)."""
        if self.group_socks:
            return self.group_socks[worker] if worker < len(self.group_socks) else None
        if self.addr.transport == "udp" and worker:
            return None     # one inherited UDP socket: one worker reads it
        return self.sock

    def stop(self) -> None:
        """Stop accepting now; connections already accepted are not touched. A UDP listener
        with sessions that must outlive it (QUIC: ``UdpSession.lingers``) keeps its socket
        for them, taking no new client, and closes it when the last one ends."""
        self.state = "stopped"
        if self._lingering():
            return
        for extra in self.group_socks[1:]:
            try:
                extra.close()
            except OSError:
                pass
        self.group_socks = []
        sock, self.sock = self.sock, None
        if self._loop is not None and not self._loop.dead and self._loop is not gevent.getcurrent():
            self._loop.kill(block=False)
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
        for session in list(self.sessions.values()):
            session.end()  # replies went out through the closed socket: nothing left to relay

    # -- binding -------------------------------------------------------------------------------

    def _socket(self) -> socket.socket:
        udp = self.addr.transport == "udp"
        if udp and self.group > 1:
            socks: list[Any] = []
            try:
                for _ in range(self.group):
                    socks.append(self._one_socket(reuseport=True))
            except BaseException:
                for s in socks:
                    s.close()
                raise
            self.group_socks = socks
            if self.quic:
                self.steer()
            return socks[0]
        return self._one_socket()

    def _one_socket(self, reuseport: bool = False) -> socket.socket:
        family = socket.AF_INET6 if self.addr.family == 6 else socket.AF_INET
        stype = socket.SOCK_DGRAM if self.addr.transport == "udp" else socket.SOCK_STREAM
        sock = gsocket.socket(family, stype)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuseport:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((self.addr.ip, self.addr.port))
            if stype == socket.SOCK_STREAM:
                sock.listen(BACKLOG)
        except BaseException:
            sock.close()
            raise
        return sock

    def _bind(self) -> bool:
        s = self.settings
        delay = s.bind_backoff_initial_ms / 1000.0
        self.state = "binding"
        while self.state == "binding":
            self.bind_attempts += 1
            try:
                self.sock = self._socket()
                return True
            except OSError as exc:
                self.last_error = f"{exc.strerror or exc} (errno {exc.errno})"
                permanent = exc.errno in PERMANENT_BIND_ERRORS
                if permanent or self.bind_attempts >= s.bind_max_attempts:
                    self.state = "failed"
                    log.warning("listener %s gave up after %d attempt(s): %s", self.addr, self.bind_attempts,
                                self.last_error, extra={"listener": str(self.addr)})
                    return False
                log.info("listener %s: bind failed (%s); retry in %.2fs", self.addr, self.last_error, delay,
                         extra={"listener": str(self.addr)})
                gevent.sleep(delay)
                delay = min(delay * 2, s.bind_backoff_max_ms / 1000.0)
        return False

    def _run(self) -> None:
        if self.sock is None and not self._bind():
            return
        if self.state == "stopped":
            self.stop()
            return
        self.state = "listening"
        self.last_error = None
        if self.addr.transport == "tcp":
            self._accept_settings()
        self.bound.set()
        if self.announce:
            log.info("listening on %s%s", self.addr, " (socket activation)" if self.inherited else "",
                     extra={"listener": str(self.addr)})
        if self.handler is None:
            return          # bound for workers, who accept
        try:
            if self.addr.transport == "udp":
                self._udp_loop()
            else:
                self._tcp_loop()
        except gevent.GreenletExit:
            pass

    def _accept_settings(self) -> None:
        """What every accepted socket gets without a system call of its own: TCP_NODELAY
        (Linux copies it from the listening socket) and, bound to one IPv4 address, the local
        address (otherwise each connection asks ``getsockname``)."""
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.nodelay = True
        except OSError:
            self.nodelay = False
        addr = self.addr
        fixed = addr.family == 4 and not addr.is_wildcard and addr.port != 0
        self.local = (addr.ip, addr.port) if fixed else None

    # -- accept loops --------------------------------------------------------------------------

    def _tcp_loop(self) -> None:
        spawn = connection_workers.spawn
        handler = self.handler
        # Out of descriptors (or buffers): the pending connection stays queued and the socket
        # stays readable, so back off instead of spinning, and log once per interval with the
        # number of failures in between.
        backoff_min, backoff_max = 0.05, 1.0
        backoff = 0.0
        logged_at, suppressed = -ACCEPT_LOG_INTERVAL, 0
        crowded = self.crowded
        ungated_until, stalls = 0.0, 0
        while self.state == "listening":
            sock = self.sock
            if sock is None:
                return
            if crowded is not None:
                gevent.sleep(0)         # the last connection's handler counts itself first
                held = 0
                while held < GATE_HOLD and crowded() and time.monotonic() >= ungated_until:
                    gevent.sleep(0.001)
                    held += 1
                if held < GATE_HOLD:
                    stalls = 0
                else:                   # the others took nothing meanwhile
                    stalls += 1
                    if stalls >= GATE_STALLS:   # a worker starting, stuck or gone: stop waiting a while
                        ungated_until, stalls = time.monotonic() + GATE_PAUSE, 0
            try:
                conn, peer = accept_raw(sock)
            except OSError as exc:
                if self.state != "listening":
                    return
                if exc.errno in RESOURCE_ERRORS:
                    self.last_error = f"accept: {exc.strerror}"
                    now = time.monotonic()
                    if now - logged_at >= ACCEPT_LOG_INTERVAL:      # one line per interval
                        log.warning("listener %s: accept failed: %s; backing off", self.addr, exc.strerror,
                                    extra={"listener": str(self.addr),
                                           **({"suppressed": suppressed} if suppressed else {})})
                        logged_at, suppressed = now, 0
                    else:
                        suppressed += 1
                    backoff = min(backoff * 2, backoff_max) if backoff else backoff_min
                    gevent.sleep(backoff)
                continue
            backoff = 0.0
            self.accepted += 1
            spawn(handler, self, conn, peer)

    def _lingering(self) -> bool:
        return self.addr.transport == "udp" and self.sock is not None \
            and any(s.lingers and not s.closed for s in self.sessions.values())

    def _udp_loop(self) -> None:
        sessions = self.sessions
        ids = self.ids
        while self.state == "listening" or self._lingering():
            sock = self.sock
            if sock is None:
                return
            try:
                data, client = sock.recvfrom(MAX_DATAGRAM)
            except OSError as exc:
                if self.state != "listening":
                    if self._lingering():
                        continue
                    break
                if exc.errno in RESOURCE_ERRORS:
                    gevent.sleep(0.1)
                continue
            if ids.by_id and (session := ids.session_of(data)) is not None:
                if client == session.client:       # a QUIC connection: its ID decides, not the address
                    session.feed(data)
                else:
                    session.feed_from(data, client)
                continue
            session = sessions.get(client)
            if session is not None and not session.closed:
                session.feed(data)
                continue
            if self.state != "listening":
                continue        # stopped: only the lingering sessions are served
            if len(sessions) >= self.max_udp_sessions:
                self.udp_dropped += 1
                continue
            session = sessions[client] = UdpSession(client, sock, data, ids=ids)
            self.accepted += 1
            gevent.spawn(self._udp_session, session)

    def _udp_session(self, session: UdpSession) -> None:
        try:
            self.handler(self, session, session.client)
        finally:
            session.closed = True
            self.ids.drop(session)
            if self.sessions.get(session.client) is session:
                del self.sessions[session.client]
            if self.state == "stopped" and session.lingers and not self._lingering():
                self.stop()     # the last session that kept the socket open


# -- QUIC steering --------------------------------------------------------------------------------

SO_ATTACH_REUSEPORT_CBPF = 51
SO_DETACH_REUSEPORT_BPF = 68


def steer_by_connection_id(sock: socket.socket, group: int, label: str) -> bool:
    """Have the kernel hand each datagram of ``sock``'s ``SO_REUSEPORT`` group to socket
    number (first byte of the QUIC destination connection ID) mod ``group``: byte 1 of a
    short header, byte 6 of a long one. A client's first Initial picks a worker by the ID it
    chose; that worker issues IDs that lead back to it (``ConnectionIds.steer``). False, and
    a warning, where the kernel refuses (then the address decides, as for other UDP)."""
    # classic BPF: A = payload[0]; if A & 0x80 (long header) A = payload[6] else A = payload[1];
    # return A % group. The program runs on the UDP payload.
    program = [(0x30, 0, 0, 0), (0x45, 3, 0, 0x80),
               (0x30, 0, 0, 1), (0x94, 0, 0, group), (0x16, 0, 0, 0),
               (0x30, 0, 0, 6), (0x94, 0, 0, group), (0x16, 0, 0, 0)]
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *op) for op in program))
    fprog = struct.pack("@HP", len(program), ctypes.addressof(code))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError as exc:
        log.warning("listener %s: cannot steer QUIC datagrams to their workers (%s); a client that "
                    "changes address may land on another worker and reconnect", label, exc,
                    extra={"listener": label})
        return False
    return True


# -- systemd socket activation ------------------------------------------------------------------

def activated_sockets(environ: dict | None = None) -> list[socket.socket]:
    """Sockets passed by systemd (LISTEN_FDS, from fd 3), if meant for this process."""
    env = os.environ if environ is None else environ
    try:
        count = int(env.get("LISTEN_FDS", "0"))
        pid = int(env.get("LISTEN_PID", str(os.getpid())))
    except ValueError:
        return []
    if count <= 0 or pid != os.getpid():
        return []
    out = []
    for fd in range(3, 3 + count):
        try:
            out.append(gsocket.socket(fileno=fd))
        except OSError as exc:
            log.warning("LISTEN_FDS: fd %d is not a socket: %s", fd, exc)
    return out


def socket_key(sock: socket.socket) -> tuple[str, str, int] | None:
    """(transport, ip, port) of a bound socket, to match it with a listen address."""
    try:
        host, port = sock.getsockname()[:2]
    except OSError:
        return None
    transport = "udp" if sock.type == socket.SOCK_DGRAM else "tcp"
    return transport, host, port
