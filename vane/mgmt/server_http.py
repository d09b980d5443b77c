"""Management over HTTP: ``POST /v1/<verb>`` with the args as JSON body (DESIGN.md §9).

Runs only with a token (``VANE_MGMT_HTTP_TOKEN`` or the token file; see ``service``). Binds
``127.0.0.1`` and ``[::1]`` at ``VANE_MGMT_HTTP_PORT`` (3333), or ``0.0.0.0`` and ``[::]``
with ``VANE_MGMT_HTTP_PUBLIC=1``.

Each request head is checked in this order before anything else is done with the request:

1. an ``Origin`` header (a web page in a browser): 403;
2. a ``Host`` that is not a loopback name (``localhost``, ``127.0.0.1``, ``[::1]``, with any
   port) nor, when public, one of the names in ``VANE_MGMT_HTTP_HOST``: 403 (DNS rebinding);
3. a POST whose Content-Type is not ``application/json`` (what a page may send without a
   CORS preflight): 415;
4. the bearer token, compared in constant time: 401.

A refused request is answered and its connection closed. Only then is the body read (a
client waiting for ``100 Continue`` gets it now), at most ``max_body`` bytes (413).

Connections: a new connection must deliver a complete request head within ``head_timeout``.
At most ``max_pending`` connections may be waiting for their first authorised request; one
more closes the oldest of them, so idle connections cannot lock out a client that sends its
request at once. An authorised client may keep its connection alive (``idle_timeout``).

The response body is the §9 response frame; error kinds map to HTTP statuses. Streams
(``tail_*``, at most ``max_streams``) answer ``application/x-ndjson``, chunked, one frame per
line (an empty line every 15 idle seconds as a heartbeat), until the client disconnects.
``GET /metrics`` serves the Prometheus text format for scrapers (with the token).
"""

from __future__ import annotations

import errno
import hmac
import logging
import re
import socket
from typing import Any, Iterable, Iterator

import gevent
from gevent import socket as gsocket

from vane.mgmt.api import DaemonAPI
from vane.mgmt.fds import FdReserve
from vane.mgmt.protocol import (
    BAD_REQUEST,
    HTTP_STATUS,
    INTERNAL,
    MAX_LINE,
    TOO_LARGE,
    UNAUTHORIZED,
    UNAVAILABLE,
    MgmtError,
    Request,
    encode,
    error_frame,
    parse_request,
    response_frame,
)
from vane.mgmt.server_unix import MgmtStartError
from vane.mgmt.slots import BUSY, IDLE, PENDING, STREAM, Slot, Slots, accept_loop
from vane.mgmt.streams import stream_frames, stream_refused, watch_eof
from vane.mgmt.verbs import Stream, dispatch
from vane.net.h1.framing import IoTimeout
from vane.net.h1.server import H1Limits, H1ServerConnection
from vane.net.http.errors import ClientDisconnected, HttpError
from vane.net.http.message import Body, BodyTooLarge, Headers, Response
from vane.net.http.message import Request as HttpRequest
from vane.observe.hub import Subscription
from vane.observe.metrics import CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE

__all__ = ["DEFAULT_PORT", "LOOPBACK", "LOOPBACK_NAMES", "PUBLIC", "HttpMgmtServer"]

log = logging.getLogger("vane.mgmt.http")

DEFAULT_PORT = 3333
HEARTBEAT_SECS = 15.0  # an empty line on an idle stream; clients time out after a few missed
LOOPBACK = ("127.0.0.1", "::1")
PUBLIC = ("0.0.0.0", "::")
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})

_HOST = re.compile(r"(\[[0-9a-f:.]*\]|[^:\[\]]*)(?::[0-9]{1,5})?", re.ASCII)
_JSON = b"application/json"


def host_name(value: str) -> str | None:
    """The name in a Host value (lower case, port removed), or None when it is malformed."""
    m = _HOST.fullmatch(value.strip().lower())
    return m.group(1) if m else None


def _is_json(values: list[str]) -> bool:
    return len(values) == 1 and values[0].split(";", 1)[0].strip().lower() == "application/json"


class _Refused(Exception):
    """A request refused before its body is read: answered with ``status``, then the close."""

    def __init__(self, status: int, error: MgmtError, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        super().__init__(error.message)
        self.status = status
        self.error = error
        self.headers = list(headers)


def _bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = gsocket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(64)
    except BaseException:
        sock.close()
        raise
    return sock


class HttpMgmtServer:
    """HTTP management endpoint for ``daemon``: owns its listening sockets, the connection
    slots (authorised or not) and the live streams. ``start()`` raises MgmtStartError."""

    def __init__(
        self,
        daemon: DaemonAPI,
        port: int = DEFAULT_PORT,
        token: str | None = None,
        public: bool = False,
        hosts: Iterable[str] | None = None,
        public_names: Iterable[str] = (),
        max_body: int = MAX_LINE,
        max_clients: int = 64,
        max_pending: int = 16,
        max_streams: int = 32,
        head_timeout: float = 5.0,
        idle_timeout: float = 30.0,
        io_timeout: float = 30.0,
        token_source: str = "",
        reserve: FdReserve | None = None,
    ) -> None:
        if not token:
            raise MgmtStartError("management HTTP needs a token (VANE_MGMT_HTTP_TOKEN or the token file)")
        self.daemon = daemon
        self.port = port
        self.token = token
        self._token = token.encode()
        self.token_source = token_source
        self.public = public
        self.hosts = tuple(hosts) if hosts is not None else (PUBLIC if public else LOOPBACK)
        self.names = LOOPBACK_NAMES | (frozenset(n.lower() for n in public_names) if public else frozenset())
        self.max_body = max_body
        self.max_streams = max_streams
        self.head_timeout = head_timeout
        self.limits = H1Limits(max_header_bytes=16384, max_header_count=64, header_timeout=head_timeout,
                               body_idle_timeout=io_timeout, keepalive_timeout=idle_timeout)
        self.slots = Slots(max_clients, max_pending)
        self._own_reserve = reserve is None
        self.reserve = reserve if reserve is not None else FdReserve(2)
        self._socks: list[socket.socket] = []
        self._loops: list[gevent.Greenlet] = []
        self._streams: set[Subscription] = set()
        self.addresses: list[tuple[str, int]] = []

    def start(self) -> None:
        """Bind every host (a missing address family is a warning) and start serving."""
        port = self.port
        errors = []
        for host in self.hosts:
            try:
                sock = _bind_tcp(host, port)
            except OSError as e:
                if e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    log.warning("management HTTP: address not available", extra={"host": host, "error": str(e)})
                    errors.append(f"{host}: {e}")
                    continue
                self.stop()
                raise MgmtStartError(f"management HTTP cannot listen on {host} port {port}: {e}") from None
            port = sock.getsockname()[1]  # port 0: the other families reuse the port chosen first
            self._socks.append(sock)
            self.addresses.append((host, port))
        if not self._socks:
            raise MgmtStartError("management HTTP could not bind any address: " + "; ".join(errors))
        self.port = port
        for sock in self._socks:
            self._loops.append(gevent.spawn(accept_loop, sock, self._admit, self.reserve, "management HTTP"))
        log.info("management HTTP listening",
                 extra={"addresses": [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.addresses],
                        "hosts": sorted(self.names), **({"token": self.token_source} if self.token_source else {})})

    def stop(self, timeout: float = 2.0) -> None:
        """Stop accepting, end streams with reason "shutdown", let requests in progress finish."""
        for sub in list(self._streams):
            sub.close("shutdown")
        for loop in self._loops:
            loop.kill(block=False)
        for sock in self._socks:
            sock.close()
        self._loops, self._socks = [], []
        self.slots.close_all((PENDING, IDLE))
        busy = [slot.greenlet for slot in self.slots if slot.greenlet is not None]
        gevent.joinall(busy, timeout=timeout)
        self.slots.close_all()
        gevent.killall(busy, block=True, timeout=1)
        if self._own_reserve:
            self.reserve.close()

    # connection ---------------------------------------------------------------------
    def _admit(self, sock: socket.socket, _addr: Any) -> None:
        if not self.slots.make_room():  # every slot answers an authorised request or runs a stream
            err = MgmtError(UNAVAILABLE, f"all {self.slots.capacity} management connections are busy; try again")
            body = encode(error_frame(None, err))
            try:
                sock.settimeout(0.0)
                sock.send(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                          b"content-length: %d\r\nconnection: close\r\n\r\n%b" % (len(body), body))
            except OSError:
                pass
            sock.close()
            self.reserve.refill()
            return
        slot = self.slots.add(sock, PENDING)
        slot.greenlet = gevent.spawn(self._connection, sock, slot)

    def _connection(self, sock: socket.socket, slot: Slot) -> None:
        conn = H1ServerConnection(sock, self.limits)
        try:
            while True:
                if slot.state == PENDING:
                    req = self._first_head(conn)
                else:
                    slot.state = IDLE
                    req = conn.next_request()
                if req is None:
                    return
                self._exchange(conn, req, sock, slot)
                if not conn.keep_alive:
                    return
        except _Refused as r:
            self._last_word(conn, r.status, error_frame(None, r.error), r.headers)
        except ClientDisconnected:
            pass
        except HttpError as e:  # malformed head, limits, slow body: answer, then close
            self._last_word(conn, e.status, error_frame(None, MgmtError(BAD_REQUEST, str(e))))
        except (OSError, IoTimeout, gevent.Timeout):
            pass  # the client went away or stalled, or the connection was closed to make room
        except Exception:
            log.exception("management HTTP connection failed")
        finally:
            self.slots.discard(slot)
            try:
                if conn.bytes_out and conn.unread_input():
                    conn.linger_close()  # the answer must not be lost to an RST
            except (OSError, IoTimeout):
                pass
            sock.close()
            self.reserve.refill()

    def _first_head(self, conn: H1ServerConnection) -> HttpRequest | None:
        """The first request head; None when it is not complete within ``head_timeout``."""
        with gevent.Timeout(self.head_timeout, False):
            return conn.next_request()
        return None

    def _last_word(self, conn: H1ServerConnection, status: int, frame: dict,
                   headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        """Answer before the close; the client may already be gone."""
        try:
            self._reply(conn, None, status, frame, headers)
        except (OSError, IoTimeout):
            pass

    def _refuse(self, req: HttpRequest) -> None:
        """Raise _Refused for a request that must not be served (see the module doc)."""
        h = req.headers
        if h.getb(b"origin") is not None:
            raise _Refused(403, MgmtError(BAD_REQUEST, "requests with an Origin header (from a web page) are refused"))
        host = h.get("host")
        for value in (host, req.authority):
            if value is None or host_name(value) not in self.names:
                shown = "none" if value is None else repr(value[:100])
                raise _Refused(403, MgmtError(BAD_REQUEST, f"Host {shown} is not a name of this management "
                                              f"endpoint ({', '.join(sorted(self.names))})"))
        if req.method == "POST" and not _is_json(h.get_all("content-type")):
            raise _Refused(415, MgmtError(BAD_REQUEST, "the request body must be application/json"))
        if not self._authorized(h.getb(b"authorization")):
            raise _Refused(401, MgmtError(UNAUTHORIZED, "missing or wrong bearer token"),
                           [(b"www-authenticate", b'Bearer realm="vaned"')])

    def _authorized(self, header: bytes | None) -> bool:
        if header is None:
            return False
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(given.strip(), self._token)

    def _exchange(self, conn: H1ServerConnection, req: HttpRequest, sock: socket.socket, slot: Slot) -> None:
        """Check, then answer one request."""
        self._refuse(req)
        slot.state = BUSY  # authorised: no longer pending
        request_id = req.headers.get("x-request-id") or None
        if request_id is not None:
            request_id = request_id[:128]
        method, path = req.method, req.path
        if path == "/metrics" and method in ("GET", "HEAD"):
            body = self.daemon.metrics.render_prometheus()
            conn.write_response(Response(200, Headers([(b"content-type", PROMETHEUS_CONTENT_TYPE.encode())]),
                                         Body.from_bytes(body)), req)
            return
        if not path.startswith("/v1/") or "/" in path[4:] or not path[4:]:
            err = MgmtError(BAD_REQUEST, f"no such endpoint {path[:100]!r}; use POST /v1/<verb>")
            self._reply(conn, req, 404, error_frame(request_id, err))
            return
        if method != "POST":
            err = MgmtError(BAD_REQUEST, "use POST with the verb's args as a JSON object body")
            self._reply(conn, req, 405, error_frame(request_id, err), [(b"allow", b"POST")])
            return
        try:
            data = req.body.read_all(self.max_body)
        except BodyTooLarge:
            conn.close_after()
            err = MgmtError(TOO_LARGE, f"request body larger than {self.max_body} bytes")
            self._reply(conn, req, 413, error_frame(request_id, err))
            return
        verb = path[4:]
        try:
            refused = stream_refused(verb, len(self._streams), self.max_streams)
            if refused is not None:
                raise refused
            parsed = parse_request(data, verb=verb)
            result = dispatch(self.daemon, Request(parsed.verb, parsed.args, request_id))
        except MgmtError as e:
            self._reply(conn, req, HTTP_STATUS.get(e.kind, 500), error_frame(request_id, e))
            return
        if isinstance(result, Stream):
            slot.state = STREAM
            self._stream(conn, req, sock, request_id, result)
            return
        self._reply(conn, req, 200, response_frame(request_id, result))

    def _reply(self, conn: H1ServerConnection, req: HttpRequest | None, status: int, frame: dict,
               headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        """One JSON frame as the response (``req`` None: the connection closes after it)."""
        try:
            data = encode(frame)
        except (TypeError, ValueError) as e:
            log.exception("management result not serialisable")
            data = encode(error_frame(frame.get("request_id"), MgmtError(INTERNAL, f"bad result: {e}")))
            status = 500
        hdrs = Headers([(b"content-type", _JSON), *headers])
        conn.write_response(Response(status, hdrs, Body.from_bytes(data)), req)

    def _stream(self, conn: H1ServerConnection, req: HttpRequest, sock: socket.socket, request_id: Any,
                stream: Stream) -> None:
        sub = stream.subscription
        self._streams.add(sub)
        watcher = gevent.spawn(watch_eof, sock, sub)

        def chunks() -> Iterator[bytes]:
            for frame in stream_frames(stream, request_id, heartbeat=HEARTBEAT_SECS):
                yield b"\n" if frame is None else encode(frame)

        conn.close_after()
        try:
            conn.write_response(Response(200, Headers([(b"content-type", b"application/x-ndjson"),
                                                       (b"cache-control", b"no-store")]), Body(chunks())), req)
        finally:
            watcher.kill(block=False)
            sub.close()
            self._streams.discard(sub)
