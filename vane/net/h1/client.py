"""HTTP/1.1 client side of one upstream connection, on llhttp (``httptools``).

``send_request`` writes a request (head and streamed body); ``read_response`` parses the
response head and returns a ``Response`` whose body streams from the socket. When that body
ends (read to its end, or closed early) the ``on_done`` callbacks run once; ``reusable`` tells
a pool whether the connection may carry another request. Pooling lives elsewhere.
"""

from __future__ import annotations

from socket import MSG_PEEK
from time import monotonic
from typing import Any, Callable

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from vane.net.h1.framing import (
    CRLF,
    RECV_SIZE,
    StreamBody,
    StreamIO,
    head_is_clean,
    recv_buffer,
    recv_view,
    write_body,
)
from vane.net.http.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from vane.net.http.message import HOP_BY_HOP, Headers, Request, Response
from vane.net.pipes import pipes
from vane.net.stream import Stream

_METHODS = {m: m.encode() for m in (
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE")}

# Methods whose empty body is still announced with "content-length: 0" (RFC 9110 §8.6).
_CL_ZERO = frozenset({"POST", "PUT", "PATCH"})

# Request headers the codec owns (framing) or drops (the body is streamed without waiting).
_REQ_SKIP = frozenset({b"content-length", b"transfer-encoding", b"expect", b"connection",
                       b"keep-alive"})

_MAX_TRAILERS = 100

# After the upstream stopped taking a request body, how long to wait for the answer it may
# already have sent (an early 413 or 401): it was written before the upload broke off.
EARLY_ANSWER_WAIT = 1.0

_CL, _TE, _CONN, _UPG, _HOP = 1, 2, 3, 4, 5
_RESP_SPECIAL = {b"content-length": _CL, b"transfer-encoding": _TE, b"connection": _CONN, b"upgrade": _UPG}
for _name in HOP_BY_HOP:
    _RESP_SPECIAL.setdefault(_name, _HOP)   # noted so forwarding can skip filtering without them


class _Trailing(Exception):
    """Bytes after the end of the response: stop parsing, never reuse the connection."""


class H1ClientConnection:
    """One connection to a backend speaking HTTP/1.1; one request at a time.

    Owns the stream, the response parser and what the current exchange did (bytes sent and
    received, whether the request went out whole and the response was read whole), which is
    what ``reusable`` decides on. ``request``/``upgrade`` are the calls the upstream pool's
    users make; ``send_request``/``read_response`` are their two halves."""

    multiplexed = False         # one request at a time (an HTTP/2 connection is True)

    def __init__(self, stream: Stream, response_timeout: float = 60.0,
                 idle_timeout: float = 60.0, max_header_bytes: int = 65536) -> None:
        self.stream = stream
        self.response_timeout = response_timeout
        self.idle_timeout = idle_timeout
        self.max_header_bytes = max_header_bytes
        self.bytes_sent = 0         # bytes of the current request handed to the socket
        self.bytes_received = 0     # bytes of the current response read from the socket
        self.requests = 0
        self._parser = HttpResponseParser(self)
        self._io = StreamIO(stream)
        self._callbacks: list[Callable[["H1ClientConnection"], None]] = []
        self._rest = b""
        self._broken = False        # framing no longer trustworthy: never reuse
        self._keep = False          # current response allows keep-alive
        self._complete = False      # current response fully read
        self._head_only = False
        self._eof_body = False      # current body ends at EOF
        self._resp: Response | None = None
        self._cur: StreamBody | None = None
        self._hlist: list[tuple[bytes, bytes]] | None = []
        self._cl: bytes | None = None
        self._te: bytes | None = None
        self._conn_hdr = b""
        self._expecting = False
        self._sent_whole = False    # the current request went out to its last byte
        self._upgrade: bytes | None = None  # the protocol the current request asks to switch to
        self._upgrade_to = b""      # the Upgrade field of the response
        self._hop = False           # the response holds hop-by-hop fields
        self.body_cut: UpstreamError | None = None  # why the current request body was not sent whole

    # ------------------------------------------------------------------ public API

    @property
    def reusable(self) -> bool:
        """True once the request was written whole, its response read to its end, and both
        sides allow keep-alive: only then can the next request not be taken for part of this
        one."""
        return self._sent_whole and self._complete and self._keep and not self._broken and not self._rest

    def request(self, req: Request, headers: Headers, timeout: float, on_done: Any = None) -> Response:
        """Send ``req`` and read its response head (the body streams). ``on_done`` is for the
        HTTP/2 interface: a leased HTTP/1.1 connection's end is its lease's end."""
        self.send_request(req, headers)
        return self.read_response(req.method == "HEAD", timeout)

    def upgrade(self, req: Request, headers: Headers, protocol: bytes,
                timeout: float) -> tuple[Response, tuple[Stream, bytes] | None]:
        """Ask to switch ``req`` to ``protocol``: ``(101, (stream, rest))`` with the stream
        detached from this codec, or ``(answer, None)`` for any other answer."""
        self.send_request(req, headers, upgrade=protocol)
        resp = self.read_response(False, timeout)
        if resp.status != 101:
            return resp, None
        return resp, self.detach()

    def on_done(self, callback: Callable[["H1ClientConnection"], None]) -> None:
        """Run ``callback(conn)`` once when the current response body ends or is dropped."""
        self._callbacks.append(callback)

    def send_request(self, req: Request, headers: Headers, upgrade: bytes | None = None) -> None:
        """Write the request line, ``headers`` plus framing, and stream the body.

        ``req.path``/``req.query`` form the target. The framing is the codec's alone, from the
        body: Content-Length when its length is known (and for an empty POST/PUT/PATCH),
        chunked coding otherwise; framing and connection fields in ``headers`` are dropped.
        ``upgrade`` (e.g. ``b"websocket"``) asks the backend to switch protocols: the request
        then has no body, and only a 101 naming that protocol is accepted.
        """
        if self.requests and not self.reusable:
            raise UpstreamConnectError("connection not reusable (previous response unfinished)")
        self.bytes_sent = 0
        self.bytes_received = 0
        self._complete = False
        self._sent_whole = False
        self._upgrade = upgrade
        self._upgrade_to = b""
        self.body_cut = None
        method = req.method
        target = req.path if not req.query else f"{req.path}?{req.query}"
        if " " in target:
            raise ValueError("space in request target")
        parts = [_METHODS.get(method) or method.encode("latin-1"), b" ",
                 target.encode("latin-1"), b" HTTP/1.1\r\n"]
        for k, v in headers.items_:
            if k not in _REQ_SKIP:
                parts += (k, b": ", v, CRLF)
        lines = 1 + (len(parts) - 4) // 4
        body = req.body
        length = body.length
        chunked = False
        if upgrade is not None:
            if length != 0:
                raise ValueError("an upgrade request carries no body")
            parts += (b"connection: upgrade\r\nupgrade: ", upgrade, CRLF)
            lines += 2
        elif req.hop and headers.getb(b"te") is not None:  # (only hop-by-hop requests carry one)
            # TE is hop-by-hop: the connection option says so (RFC 9110 §10.1.4)
            parts.append(b"connection: te\r\n")
            lines += 1
        if length is None:
            parts.append(b"transfer-encoding: chunked\r\n\r\n")
            chunked = True
        elif length or method in _CL_ZERO:
            parts.append(b"content-length: %d\r\n\r\n" % length)
        else:
            parts.append(CRLF)
            lines -= 1
        head = b"".join(parts)
        if not head_is_clean(head, lines + 2):
            raise ValueError("CR or LF in request line or header")
        if length == 0:
            body.close()
            self._send(head)
            self._sent_whole = True
            return
        try:
            self._send_body(head, body, chunked)
            self._sent_whole = True
        except UpstreamError as exc:
            if not self.bytes_sent:
                raise
            # The upstream stopped taking the body after the head: it may have answered early
            # (413, 401, a redirect). read_response returns that answer, else raises ``exc``.
            self.body_cut = exc
        finally:
            body.close()

    def read_response(self, head_only_method: bool = False,
                      timeout: float | None = None) -> Response:
        """Read the next final (or 101) response head; 1xx interim responses are skipped.

        ``head_only_method``: the request was HEAD, so the response has no body whatever its
        headers say. ``timeout`` (default ``response_timeout``) bounds the whole head.
        """
        self._head_only = head_only_method
        self._resp = None
        self._expecting = True
        self.requests += 1
        limit = self.response_timeout if timeout is None else timeout
        cut = self.body_cut
        if cut is None:
            return self._read_head(limit)
        try:
            return self._read_head(min(limit, EARLY_ANSWER_WAIT))
        except UpstreamError:
            raise cut from None

    def _read_head(self, limit: float) -> Response:
        deadline = 0.0
        while self._resp is None:
            if deadline:
                remaining = deadline - monotonic()
                if remaining <= 0:
                    raise self._fail(UpstreamTimeout("response head timeout", True,
                                                     self.bytes_received > 0))
                n = self._recv("response head", remaining)
            else:
                deadline = monotonic() + limit
                n = self._recv("response head", limit, wait_first=True)
            if not n:
                raise self._fail(UpstreamProtocolError(
                    "connection closed before a response", self.bytes_sent > 0,
                    self.bytes_received > 0))
            if self._resp is None and self.bytes_received > self.max_header_bytes:
                raise self._fail(UpstreamProtocolError("response head too large", True, True))
        resp = self._resp
        self._resp = None
        if self._head_only and not self._broken:
            # llhttp cannot be told the response answers HEAD: it would wait for the body
            # announced by Content-Length. Start afresh for the next response.
            self._parser = HttpResponseParser(self)
        return resp

    def detach(self) -> tuple[Stream, bytes]:
        """Hand the raw stream and any bytes read past a 101 head to a tunnel.

        The stream has no socket timeout (the codec bounds its own calls with timers); the
        tunnel sets whatever it needs.
        """
        stream, rest = self.stream, self._rest
        self._rest = b""
        self._broken = True
        return stream, rest

    def close(self) -> None:
        """Close the stream; the connection is not reusable afterwards."""
        self._broken = True
        try:
            self.stream.close()
        except OSError:
            pass

    # ------------------------------------------------------------------ sending

    def _send(self, data: bytes) -> None:
        try:
            self._io.sendall(data, self.idle_timeout)
        except TimeoutError:
            raise self._fail(UpstreamTimeout("send timeout", True)) from None
        except OSError as exc:
            raise self._fail(UpstreamConnectError(
                f"send failed: {exc}", self.bytes_sent > 0)) from None
        self.bytes_sent += len(data)

    def _send_body(self, head: bytes, body, chunked: bool) -> None:
        io = self._io
        before = io.sent
        try:
            write_body(io, head, body, chunked, self.idle_timeout)
        except TimeoutError:
            self.bytes_sent += io.sent - before
            raise self._fail(UpstreamTimeout("send timeout", True)) from None
        except OSError as exc:
            self.bytes_sent += io.sent - before
            raise self._fail(UpstreamConnectError(f"send failed: {exc}", self.bytes_sent > 0)) from None
        self.bytes_sent += io.sent - before

    # ------------------------------------------------------------------ receiving

    def _fail(self, exc: UpstreamError) -> UpstreamError:
        self._broken = True
        return exc

    def _recv(self, what: str, timeout: float, wait_first: bool = False) -> int:
        """Read once and feed the parser; returns the byte count (0 at EOF)."""
        try:
            n = self._io.recv_into(recv_buffer, timeout, wait_first)
        except TimeoutError:
            raise self._fail(UpstreamTimeout(f"{what} timeout", True,
                                             self.bytes_received > 0)) from None
        except OSError as exc:
            raise self._fail(UpstreamConnectError(
                f"{what}: {exc}", self.bytes_sent > 0, self.bytes_received > 0)) from None
        if n:
            self.bytes_received += n
            data = recv_view[:n] if n < RECV_SIZE else recv_view
            try:
                self._parser.feed_data(data)
            except HttpParserUpgrade as exc:
                self._rest = bytes(data[exc.args[0]:])
            except HttpParserError as exc:
                cause = exc.__context__
                if isinstance(cause, _Trailing) or (not self._expecting and self._cur is None):
                    self._broken = True     # junk after a complete response: drop the conn
                    return n
                if isinstance(cause, UpstreamError):
                    raise self._fail(cause) from None
                raise self._fail(UpstreamProtocolError(
                    f"malformed response: {exc}", True, True)) from None
        return n

    def _fill(self, body: StreamBody) -> None:
        """Read more of the response body (called by its iterator)."""
        if not self._recv("response body", self.idle_timeout):
            if self._eof_body:
                body.done = True
                self._keep = False
            else:
                raise self._fail(UpstreamProtocolError("response body truncated", True, True))

    def _splice(self, body: StreamBody, io: StreamIO, head: bytes, timeout: float) -> int | None:
        """Send ``head`` to ``io``, then the rest of ``body`` (a Content-Length body being
        read) from this connection's socket by ``splice``, through a pipe: the bytes sent to
        ``io``. None when either side is not a plain socket. The parser never sees the bytes
        moved, so it starts afresh for the next response; the connection is reusable only
        once exactly the announced length went through. Errors of the backend raise
        ``UpstreamError``, those of ``io`` propagate (``timeout`` bounds each wait to write)."""
        if not (io.plain and self._io.plain) or body is not self._cur:
            return None
        try:
            pipe = pipes.get()
        except OSError:             # out of descriptors: the body goes through Python
            return None
        ready = body.take_ready()
        if ready:
            head += b"".join(ready)
        in_pipe = 0
        try:
            io.sendall(head, timeout)
            sent = len(head)
            left = body.length - body.received
            while left:
                try:
                    in_pipe = self._io.splice_in(pipe[1], min(left, pipe[2]), self.idle_timeout)
                except TimeoutError:
                    raise self._fail(UpstreamTimeout("response body timeout", True, True)) from None
                except OSError as exc:
                    raise self._fail(UpstreamConnectError(f"response body: {exc}", True, True)) from None
                if not in_pipe:
                    raise self._fail(UpstreamProtocolError("response body truncated", True, True))
                self.bytes_received += in_pipe
                left -= in_pipe
                body.received += in_pipe
                io.splice_out(pipe[0], in_pipe, timeout)
                sent += in_pipe
                in_pipe = 0
        finally:
            if in_pipe:
                pipes.discard(pipe)     # bytes stuck inside: not reusable
            else:
                pipes.put(pipe)
        body.done = True
        self._cur = None
        self._parser = HttpResponseParser(self)
        self._reset_message()
        try:
            # anything already behind the body (junk, a second response) or an EOF: the
            # parser would have seen it in the same read; never reuse such a connection
            self.stream.sock.recv(1, MSG_PEEK)
            self._broken = True
        except BlockingIOError:
            pass
        except OSError:
            self._broken = True
        body._source = None
        self._body_end(body, True)
        return sent

    def _body_end(self, body: StreamBody, complete: bool) -> None:
        if complete:
            self._complete = True
        else:
            self._broken = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)

    # ------------------------------------------------------------------ parser callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        hlist = self._hlist
        if hlist is None:           # trailers
            body = self._cur
            if body is not None:
                if body.trailers is None:
                    body.trailers = []
                elif len(body.trailers) >= _MAX_TRAILERS:
                    raise UpstreamProtocolError("too many trailer fields", True, True)
                body.trailers.append((name, value))
            return
        kind = _RESP_SPECIAL.get(name)
        if kind is not None:
            if kind == _CL:
                self._cl = value
            elif kind == _HOP:
                self._hop = True
            elif kind == _CONN:
                self._conn_hdr += value.lower()
                self._hop = True
            elif kind == _UPG:
                self._upgrade_to = value.strip().lower()
                self._hop = True
            else:
                self._hop = True
                if self._te is not None or value.lower() != b"chunked":
                    raise UpstreamProtocolError("unsupported Transfer-Encoding", True, True)
                self._te = value
        hlist.append((name, value))

    def on_headers_complete(self) -> None:
        hlist, self._hlist = self._hlist, None
        if not self._expecting:     # a message after the end of the response
            self._broken = True
            raise _Trailing()
        parser = self._parser
        status = parser.get_status_code()
        if status < 200 and status != 101:
            self._reset_message()
            return                  # interim response: skipped
        if status == 101:
            self._broken = True     # whatever follows, the connection never carries HTTP again
            if self._upgrade is None:
                raise UpstreamProtocolError("101 to a request that asked for no upgrade", True, True)
            if not parser.should_upgrade():
                raise UpstreamProtocolError("101 without Connection: upgrade", True, True)
            if self._upgrade_to != self._upgrade:
                raise UpstreamProtocolError(
                    f"101 switching to {self._upgrade_to[:40]!r}, not the {self._upgrade.decode()!r} asked for",
                    True, True)
        self._expecting = False
        self._keep = parser.should_keep_alive()
        self._eof_body = False
        body = StreamBody(self, None)
        if self._head_only or status == 204 or status == 304 or status == 101:
            body.length = 0
            body.done = True
            self._cur = None
            if self._head_only:     # llhttp counts a body-less HEAD answer as close-delimited
                if parser.get_http_version() == "1.1":
                    self._keep = b"close" not in self._conn_hdr
                else:
                    self._keep = b"keep-alive" in self._conn_hdr
        elif self._te is not None:
            self._cur = body
        elif self._cl is not None:
            body.length = int(self._cl)
            body.done = body.length == 0
            self._cur = None if body.done else body
        else:
            self._eof_body = True
            self._keep = False
            self._cur = body
        resp = self._resp = Response(status, Headers(hlist), body)
        resp.hop = self._hop
        if self._cur is None:
            self._reset_message()

    def on_body(self, data: bytes) -> None:
        body = self._cur
        if body is None:            # a body the response may not have (HEAD, 204, 304)
            self._broken = True
            return
        body.received += len(data)
        body.pending.append(data)

    def on_message_complete(self) -> None:
        body = self._cur
        if body is not None:
            body.done = True
            self._cur = None
            self._reset_message()

    def _reset_message(self) -> None:
        self._hlist = []
        self._cl = self._te = None
        self._conn_hdr = b""
        self._upgrade_to = b""
        self._hop = False
