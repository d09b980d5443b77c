"""HTTP/1.x server side of a client connection, on llhttp (``httptools``).

``H1ServerConnection.next_request()`` parses request heads (keep-alive and pipelining, in
order) into ``Request`` objects whose body streams from the socket as the handler reads it;
``write_response()`` frames and sends a ``Response``. Framing ambiguities that enable request
smuggling are refused with 400 before any handler sees the request: Content-Length with
Transfer-Encoding, duplicate Content-Length (even with equal values), a Transfer-Encoding
other than exactly ``chunked`` (and any on HTTP/1.0), obs-fold, bare LF, bad header names,
bad chunk sizes, a missing or repeated Host on HTTP/1.1.
"""

from __future__ import annotations

from dataclasses import dataclass
from time import monotonic

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from vane.net.h1.framing import (
    CRLF,
    NO_BODY,
    RECV_SIZE,
    STATUS_LINES,
    StreamBody,
    StreamIO,
    http_date,
    recv_buffer,
    recv_view,
    status_line,
    write_body,
)
from vane.net.http.errors import ClientDisconnected, HttpError
from vane.net.http.limits import check_field_count, check_target_length
from vane.net.http.message import (
    HOP_OR_FORWARDING,
    Headers,
    Request,
    Response,
    accepts_trailers,
    expects_continue,
)
from vane.net.http.status import plain_response
from vane.net.http.target import check_query, normalize_authority, normalize_path
from vane.net.pipes import pipes
from vane.net.stream import Stream
from vane.net.tunnel import linger

# Unread request body left when the next request is due: drain up to this much, else close.
DRAIN_LIMIT = 256 * 1024

# Lingering close: after the server ends a connection the client is still writing to, read
# and discard for at most this long / this much, so the kernel does not answer the unread
# bytes with an RST that destroys the response still in flight.
LINGER_SECS = 2.0
LINGER_BYTES = 1024 * 1024

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

_METHODS = {m.encode(): m for m in (
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE")}

# Request headers the parser callbacks look at (everything else is only stored).
_HOST, _CL, _TE, _EXPECT, _UPGRADE, _HOP, _ACCEPT_TE = 1, 2, 3, 4, 5, 6, 7
_REQ_SPECIAL = {b"host": _HOST, b"content-length": _CL, b"transfer-encoding": _TE,
                b"expect": _EXPECT, b"upgrade": _UPGRADE, b"te": _ACCEPT_TE}
for _name in HOP_OR_FORWARDING:
    _REQ_SPECIAL.setdefault(_name, _HOP)    # noted so forwarding can skip filtering without them

# Response headers the codec owns: framing and connection management are written by
# write_response, whatever the handler left in the header list.
_OUT_CL, _OUT_DROP, _OUT_DATE = 1, 2, 3
_RESP_SPECIAL = {b"content-length": _OUT_CL, b"transfer-encoding": _OUT_DROP,
                 b"connection": _OUT_DROP, b"keep-alive": _OUT_DROP, b"date": _OUT_DATE}

# Per-request flags kept beside the Request in the ready queue.
_F_KEEP, _F_EXPECT, _F_UPGRADE, _F_TRAILERS = 1, 2, 4, 8


@dataclass
class H1Limits:
    """Per-connection limits (the security floor supplies the values)."""

    max_header_bytes: int = 65536
    max_header_count: int = 100
    header_timeout: float = 30.0
    body_idle_timeout: float = 30.0
    keepalive_timeout: float = 75.0
    send_timeout: float = 10.0          # a response write during which the client takes nothing
    max_uri_bytes: int = 8192           # the request target (414 past it)


IDLE = Request("", "")  # next_request(idle=...): no request yet, nothing consumed


class H1ServerConnection:
    """One client connection speaking HTTP/1.0 or 1.1."""

    # slots: ten thousand idle keep-alive connections each keep one of these
    __slots__ = ("stream", "limits", "scheme", "requests", "bytes_in", "bytes_out", "_parser", "_io", "_ready",
                 "_rest", "_keep", "_flags", "_body", "_continue_due", "_in_head", "_head_spanned",
                 "_head_bytes", "_feed_len", "_url", "_hlist", "_host", "_cl", "_te", "_expect", "_trailers",
                 "_upgrade", "_chunk_wire", "_chunk_count", "_cur", "_upgrade_body", "_synthetic", "_stopped", "_hop",
                 "head_out", "input_since")

    def __init__(self, stream: Stream, limits: H1Limits | None = None,
                 scheme: str = "http") -> None:
        self.stream = stream
        self.limits = limits or H1Limits()
        self.scheme = scheme
        self.requests = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.head_out = 0           # the bytes of the last response's head (the rest was its body)
        self._parser = HttpRequestParser(self)
        self._io = StreamIO(stream)
        self._ready: list[tuple[Request, int]] = []  # pipelined requests parsed ahead, in order
        self._rest = b""            # raw bytes left unparsed after an upgrade request
        self._keep = True           # may carry another request
        self._flags = 0             # flags of the request being handled
        self._body: StreamBody | None = None  # its body, if it has one
        self._continue_due = False
        # parse state of the message being parsed
        self._in_head = False
        self.input_since = 0.0      # when the first bytes ``opens_with`` read arrived (monotonic)
        self._head_spanned = False
        self._head_bytes = 0
        self._feed_len = 0
        self._url = b""
        self._hlist: list[tuple[bytes, bytes]] | None = []
        self._host: bytes | None = None
        self._cl: bytes | None = None
        self._te: bytes | None = None
        self._expect = False
        self._trailers = False      # the client accepts trailers (``TE: trailers``)
        self._upgrade = False
        self._hop = False           # the message holds hop-by-hop or forwarding fields
        self._chunk_wire = 0
        self._chunk_count = 0
        self._cur: StreamBody | None = None
        self._upgrade_body: StreamBody | None = None
        self._synthetic = False
        self._stopped = False       # the parser stopped at the end of an upgrade request's head

    # ------------------------------------------------------------------ public API

    @property
    def keep_alive(self) -> bool:
        """Whether the connection may carry another request after the current one."""
        return self._keep

    def idle(self) -> bool:
        """Between requests with nothing buffered or half-read: the next request may be waited
        for elsewhere (the connection can be parked without its greenlet)."""
        body = self._body
        return (self._keep and not self._ready and not self._rest and not self._in_head
                and (body is None or body.done) and not self._flags & _F_UPGRADE)

    def close_after(self) -> None:
        """Ask for ``Connection: close`` on the next response and no further requests."""
        self._keep = False

    def next_request(self, idle: float | None = None) -> Request | None:
        """Read the next request head; None on clean EOF or keep-alive idle timeout.

        With ``idle``, return ``IDLE`` instead when no byte arrived within that many seconds
        and nothing is buffered: the connection stays usable and may be waited on elsewhere.
        Raises ``HttpError`` on malformed input or breached limits; the connection is then
        not reusable (answer with ``write_error`` and close).
        """
        body = self._body
        if body is not None:
            if not body.done and self._keep:
                self._drain()
            self._body = None
        if not self._keep:
            return None
        ready = self._ready
        if not ready:
            if self._read_head(idle):
                return IDLE
            if not ready:
                return None
        req, flags = ready.pop(0)
        self._flags = flags
        self.requests += 1
        body = req.body
        if body is NO_BODY:
            self._continue_due = False
        else:
            self._body = body
            self._continue_due = bool(flags & _F_EXPECT) and not body.done and not body.pending
        return req

    def write_response(self, resp: Response, request: Request | None) -> int:
        """Send ``resp`` with HTTP/1 framing; returns the bytes written.

        Framing and connection headers in ``resp.headers`` are replaced by the codec's own
        (Content-Length from ``body.length``, else chunked for HTTP/1.1, else close-delimited);
        HEAD, 1xx, 204 and 304 answers carry no body; a chunked body ends with its trailers
        when the request said ``TE: trailers``, else they are dropped. Raises OSError if
        the client is gone; an exception from the body iterator aborts the response (the
        connection must then be closed).
        """
        status = resp.status
        body = resp.body
        if request is None:
            self._keep = v10 = head_req = trailers = False
        else:
            trailers = bool(self._flags & _F_TRAILERS)
            v10 = request.version == "1.0"
            head_req = request.method == "HEAD"
            if self._keep:
                self._keep = self._may_keep(request, status)

        parts = [STATUS_LINES.get(status) or status_line(status, resp.reason)]
        content_length = None
        has_date = False
        for k, v in resp.headers.items_:
            kind = _RESP_SPECIAL.get(k)
            if kind is None:
                parts += (k, b": ", v, CRLF)
            elif kind == _OUT_CL:
                content_length = v
            elif kind == _OUT_DATE:
                has_date = True
                parts += (k, b": ", v, CRLF)
        lines = 2 + (len(parts) - 1) // 4      # status line, fields, blank line

        chunked = send_body = False
        length = body.length
        if status < 200 or status == 204:
            pass
        elif head_req or status == 304:
            if content_length is not None:
                parts.append(b"content-length: %b\r\n" % content_length)
                lines += 1
            elif head_req and status != 304 and length is not None:
                parts.append(b"content-length: %d\r\n" % length)
                lines += 1
        elif length is not None and not (trailers and body.trailers and not v10):
            parts.append(b"content-length: %d\r\n" % length)
            lines += 1
            send_body = length > 0
        elif not v10:
            parts.append(b"transfer-encoding: chunked\r\n")
            lines += 1
            send_body = chunked = True
        else:
            self._keep = False
            send_body = True
        if not has_date:
            parts += (b"date: ", http_date(), CRLF)
            lines += 1
        if status == 101:
            parts.append(b"connection: upgrade\r\n")
            lines += 1
        elif status >= 200:
            if not self._keep:
                parts.append(b"connection: close\r\n")
                lines += 1
            elif v10:
                parts.append(b"connection: keep-alive\r\n")
                lines += 1
        parts.append(CRLF)
        head = b"".join(parts)
        self.head_out = len(head)
        if head.count(b"\n") != lines or head.count(b"\r") != lines:
            # a CR or LF inside a name or value (set by a plugin): drop those fields
            resp.headers.items_ = [(k, v) for k, v in resp.headers.items_
                                   if _clean(k) and _clean(v)]
            return self.write_response(resp, request)

        if not send_body:
            body.close()
            self._io.sendall(head, self.limits.send_timeout)
            self.bytes_out += len(head)
            return len(head)
        try:
            sent = write_body(self._io, head, body, chunked, self.limits.send_timeout, chunked and trailers)
        except BaseException:
            self._keep = False
            raise
        finally:
            body.close()
        self.bytes_out += sent
        return sent

    def opens_with(self, prefix: bytes) -> bool:
        """Before the first request: whether the client's input opens with ``prefix`` (the
        HTTP/2 client preface of a client with prior knowledge).

        Reads as ``next_request`` would: the first byte within the header timeout, and the
        header timeout from that byte on for the rest. It goes on reading only while what
        arrived is still the start of ``prefix``. Nothing read is lost and no time is given
        twice: the bytes are the first request's (``next_request`` parses them, its head due
        by the same deadline) or, when True, ``take_input()`` hands them on, and
        ``input_since`` tells when they began. A client that sent nothing in time, or closed,
        gets no request from ``next_request``.
        """
        io = self._io
        timeout = self.limits.header_timeout
        got = b""
        deadline = 0.0
        while True:
            try:
                n = io.recv_into(recv_buffer, timeout)
            except OSError:         # a timeout included: what came is left to next_request
                n = 0
            if not n:
                if not got:
                    self._keep = False
                break
            now = monotonic()
            if not deadline:
                self.input_since = now
                deadline = now + timeout
            got += recv_view[:n]
            if len(got) >= len(prefix) or not prefix.startswith(got):
                break
            timeout = deadline - now
            if timeout <= 0:
                break
        self._rest = got
        if got.startswith(prefix):
            return True             # the codec that takes them counts them
        self.bytes_in += len(got)
        return False

    def take_input(self) -> bytes:
        """The bytes ``opens_with`` read, for the codec that takes the connection over; this
        one serves no request."""
        rest, self._rest = self._rest, b""
        self._keep = False
        return rest

    def write_error(self, status: int, body: str = "") -> int:
        """Answer ``status`` with a short text body and ``Connection: close``."""
        self._keep = False
        return self.write_response(plain_response(status, body or None), None)

    def unread_input(self) -> bool:
        """Whether the client may still be sending input this connection will not read."""
        body = self._body
        return bool(self._ready or self._rest or self._in_head or (body is not None and not body.done))

    def linger_close(self) -> None:
        """Half-close, then discard the client's input within ``LINGER_SECS`` and
        ``LINGER_BYTES``; the caller closes the stream afterwards."""
        linger(self.stream, LINGER_SECS, LINGER_BYTES)

    def detach(self) -> tuple[Stream, bytes]:
        """Hand the raw stream and the bytes already read past the head to a tunnel.

        The stream has no socket timeout (the codec bounds its own calls with timers); the
        tunnel sets whatever it needs.
        """
        stream, rest = self.stream, self._rest
        self._rest = b""
        self._keep = False
        self._ready.clear()
        return stream, rest

    # ------------------------------------------------------------------ reading

    def _read_head(self, idle: float | None = None) -> bool:
        """Read until a request head is complete (or EOF / idle timeout before one).

        True when ``idle`` seconds passed before the first byte of a head (nothing consumed)."""
        in_head = self._in_head     # bytes of the next head arrived with the last body
        limits = self.limits
        deadline = 0.0
        since = self.input_since    # this head began in ``opens_with``: its time runs from then
        if since:
            self.input_since = 0.0
            deadline = since + limits.header_timeout
            self._head_spanned = True
        if self._rest:
            rest, self._rest = self._rest, b""
            self._feed(rest, len(rest))
            if self._ready:
                return False
            in_head = True          # a head has begun: the header timeout runs
        io = self._io
        while True:
            if in_head:
                now = monotonic()
                if not deadline:
                    deadline = now + limits.header_timeout
                    self._head_spanned = True
                elif now >= deadline:
                    raise self._fail(HttpError(408))
                timeout = deadline - now
            elif idle is not None:
                timeout = idle
            else:
                timeout = limits.keepalive_timeout if self.requests else limits.header_timeout
            try:
                # after an answer the next request is not there yet (one pipelined behind it
                # came with the same read): wait for it rather than try and fail first
                n = io.recv_into(recv_buffer, timeout, not in_head and self.requests > 0)
            except TimeoutError:
                if in_head:
                    raise self._fail(HttpError(408)) from None
                if idle is not None:
                    return True
                n = 0
            except OSError:
                n = 0
            if not n:
                self._keep = False
                return False
            self.bytes_in += n
            self._feed_len = n
            data = recv_view[:n] if n < RECV_SIZE else recv_view
            try:
                self._parser.feed_data(data)
            except HttpParserUpgrade as exc:
                self._upgraded(bytes(data[exc.args[0]:]))
            except HttpParserError as exc:
                raise self._parse_error(exc) from None
            if self._ready:
                return False
            if deadline:
                self._head_bytes += n
                if self._head_bytes > limits.max_header_bytes:
                    raise self._fail(HttpError(431))
            in_head = True

    def _feed(self, data, n: int) -> None:
        self._feed_len = n
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade as exc:
            self._upgraded(bytes(data[exc.args[0]:]))
        except HttpParserError as exc:
            raise self._parse_error(exc) from None

    def _parse_error(self, exc: HttpParserError) -> HttpError:
        cause = exc.__context__
        if isinstance(cause, HttpError):
            return self._fail(cause)
        return self._fail(HttpError(400, str(exc) or "Bad Request"))

    def _fail(self, exc: HttpError) -> HttpError:
        self._keep = False
        self._ready.clear()
        return exc

    def _upgraded(self, rest: bytes) -> None:
        body = self._upgrade_body
        if body is None:
            self._rest = rest
            self._stopped = True
            return
        # An upgrade request that also carries a body: the parser stopped at the end of the
        # head. A fresh parser primed with a synthetic head reads the body that follows.
        self._upgrade_body = None
        self._cur = body
        self._reset_message()
        self._parser = HttpRequestParser(self)
        self._synthetic = True
        if body.length is None:
            self._parser.feed_data(b"PUT / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n")
        else:
            self._parser.feed_data(b"PUT / HTTP/1.1\r\ncontent-length: %d\r\n\r\n" % body.length)
        if rest:
            self._feed(rest, len(rest))

    def _fill(self, body: StreamBody) -> None:
        """Read more of ``body`` (called by its iterator)."""
        if self._continue_due and body is self._body:
            self._continue_due = False
            self._io.sendall(_CONTINUE, self.limits.send_timeout)
            self.bytes_out += len(_CONTINUE)
        self._read_body_bytes()

    def _read_body_bytes(self) -> None:
        if self._rest:
            rest, self._rest = self._rest, b""
            self._feed(rest, len(rest))
            return
        try:
            n = self._io.recv_into(recv_buffer, self.limits.body_idle_timeout)
        except TimeoutError:
            raise self._fail(HttpError(408, "request body timeout")) from None
        except OSError as exc:
            raise self._fail(ClientDisconnected(str(exc))) from None
        if not n:
            raise self._fail(ClientDisconnected())
        self.bytes_in += n
        body = self._cur
        if body is not None and body.length is None:
            # chunked: bound what is not data (chunk lines, trailers) that llhttp and
            # httptools may accumulate in memory
            self._chunk_wire += n
            if (self._chunk_wire - body.received
                    > self.limits.max_header_bytes + 64 * self._chunk_count):
                raise self._fail(HttpError(431, "chunk framing or trailers too large"))
        self._feed(recv_view[:n] if n < RECV_SIZE else recv_view, n)

    def _body_end(self, body: StreamBody, complete: bool) -> None:
        pass

    def _splice(self, body: StreamBody, io: StreamIO, head: bytes, timeout: float) -> int | None:
        """Send ``head`` to ``io`` (an upstream), then the rest of the current request's
        Content-Length ``body`` from the client's socket by ``splice``, through a pipe: the
        bytes sent to ``io``. None when either side is not a plain socket, or the body is not
        the plain current one (an upgrade's, one behind bytes already read). The parser never
        sees the bytes moved, so it starts afresh for the next request, whose bytes are still
        in the socket; a splice that fails midway ends the connection (the parser's count of
        the body is gone). Errors of the client raise ``HttpError`` (408, or
        ``ClientDisconnected``), those of ``io`` propagate (``timeout`` bounds each wait to
        write)."""
        if (not (io.plain and self._io.plain) or body is not self._cur or body is not self._body
                or self._rest or self._flags & _F_UPGRADE):
            return None
        try:
            pipe = pipes.get()
        except OSError:             # out of descriptors: the body goes through Python
            return None
        in_pipe = 0
        try:
            if self._continue_due:
                self._continue_due = False
                self._io.sendall(_CONTINUE, self.limits.send_timeout)
                self.bytes_out += len(_CONTINUE)
            ready = body.take_ready()
            if ready:
                head += b"".join(ready)
            io.sendall(head, timeout)
            sent = len(head)
            left = body.length - body.received
            idle = self.limits.body_idle_timeout
            while left:
                try:
                    in_pipe = self._io.splice_in(pipe[1], min(left, pipe[2]), idle)
                except TimeoutError:
                    raise self._fail(HttpError(408, "request body timeout")) from None
                except OSError as exc:
                    raise self._fail(ClientDisconnected(str(exc))) from None
                if not in_pipe:
                    raise self._fail(ClientDisconnected())
                self.bytes_in += in_pipe
                left -= in_pipe
                body.received += in_pipe
                io.splice_out(pipe[0], in_pipe, timeout)
                sent += in_pipe
                in_pipe = 0
        except BaseException:
            self._keep = False
            raise
        finally:
            if in_pipe:
                pipes.discard(pipe)     # bytes stuck inside: not reusable
            else:
                pipes.put(pipe)
        body.done = True
        self._cur = None
        self._parser = HttpRequestParser(self)
        self._reset_message()
        body._source = None
        return sent

    def _may_keep(self, request: Request, status: int) -> bool:
        flags = self._flags
        if not flags & _F_KEEP:
            return False
        if flags & _F_UPGRADE:
            if status == 101 or request.method == "CONNECT":
                return False            # the stream is handed over (or the tunnel refused)
            self._decline_upgrade()
        body = self._body
        if body is not None and not body.done:
            if self._continue_due:      # the client still waits for 100 before sending
                return False
            if body.length is not None and body.length - body.received > DRAIN_LIMIT:
                return False
        return True

    def _decline_upgrade(self) -> None:
        """An upgrade request answered without switching (an ``Upgrade: h2c`` or a refused
        WebSocket): the connection goes on with HTTP/1.1 (RFC 9110 §7.8)."""
        self._flags &= ~_F_UPGRADE
        if self._stopped:
            self._stopped = False
            self._parser = HttpRequestParser(self)
            self._reset_message()

    def _drain(self) -> None:
        """Discard the unread rest of the current request body, within DRAIN_LIMIT."""
        body = self._body
        if self._continue_due or (
                body.length is not None and body.length - body.received > DRAIN_LIMIT):
            self._keep = False
            return
        body.close()
        budget = DRAIN_LIMIT
        try:
            while not body.done:
                if body.pending:
                    for chunk in body.pending:
                        budget -= len(chunk)
                    body.pending = []
                    if budget < 0:
                        self._keep = False
                        return
                else:
                    self._read_body_bytes()
            body.pending = []
        except HttpError:
            self._keep = False

    # ------------------------------------------------------------------ parser callbacks

    def on_url(self, url: bytes) -> None:
        self._in_head = True
        self._url += url
        check_target_length(len(self._url), self.limits.max_uri_bytes)

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        hlist = self._hlist
        if hlist is None:           # trailer section of a chunked body
            body = self._cur
            if body is not None:
                if body.trailers is None:
                    body.trailers = []
                check_field_count(len(body.trailers) + 1, self.limits.max_header_count, "trailer")
                body.trailers.append((name, value))
            return
        kind = _REQ_SPECIAL.get(name)
        if kind is not None:
            if kind == _HOST:
                if self._host is not None:
                    raise HttpError(400, "several Host headers")
                self._host = value
            elif kind == _CL:
                self._cl = value
            elif kind == _HOP:
                self._hop = True
            elif kind == _TE:
                if self._te is not None:
                    raise HttpError(400, "several Transfer-Encoding headers")
                self._te = value
                self._hop = True
            elif kind == _EXPECT:
                self._expect = expects_continue(value)
            elif kind == _ACCEPT_TE:
                self._trailers = self._trailers or accepts_trailers(value)
                self._hop = True
            else:
                self._upgrade = self._hop = True
        hlist.append((name, value))

    def on_headers_complete(self) -> None:
        hlist, self._hlist = self._hlist, None
        self._in_head = False
        url, self._url = self._url, b""
        if self._synthetic:
            self._synthetic = False
            return
        limits = self.limits
        check_field_count(len(hlist), limits.max_header_count)
        if self._head_spanned or self._feed_len > limits.max_header_bytes:
            size = len(url) + 4 * len(hlist)
            for k, v in hlist:
                size += len(k) + len(v)
            if size > limits.max_header_bytes:
                raise HttpError(431, "header section too large")
            self._head_spanned = False
            self._head_bytes = 0
        parser = self._parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise HttpError(505)
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method) or raw_method.decode("latin-1")
        host = self._host

        if host is None and version == "1.1":
            raise HttpError(400, "missing Host header")
        if url[:1] == b"/":
            i = url.find(b"?")
            if i < 0:
                path, query = normalize_path(url.decode("latin-1")), ""
            else:
                path, query = normalize_path(url[:i].decode("latin-1")), check_query(url[i + 1:].decode("latin-1"))
            raw_authority = host
        else:
            path, query, raw_authority = _other_target(method, url, host)
        if raw_authority is None:
            authority = ""
        else:
            # RFC 9112 §3.2.2: an absolute-form target's authority replaces Host. Either way the
            # Host field carries the normalised authority the request is routed on.
            authority = normalize_authority(raw_authority) if method != "CONNECT" else raw_authority.decode("latin-1")
            if host is None:
                hlist.insert(0, (b"host", authority.encode("latin-1")))
            elif authority.encode("latin-1") != host:
                value = authority.encode("latin-1")
                hlist = [(k, value if k == b"host" else v) for k, v in hlist]

        te = self._te
        flags = _F_KEEP if parser.should_keep_alive() else 0
        if te is not None:
            if version == "1.0":
                raise HttpError(400, "Transfer-Encoding on HTTP/1.0")
            if te.lower() != b"chunked":
                raise HttpError(400, "unsupported Transfer-Encoding")
            body = self._cur = StreamBody(self, None)
            self._chunk_wire = self._chunk_count = 0
        elif self._cl is not None and self._cl != b"0":
            body = self._cur = StreamBody(self, int(self._cl))
        else:
            body = NO_BODY
        if self._expect:
            flags |= _F_EXPECT
        if self._trailers:
            flags |= _F_TRAILERS
        upgrade = None
        if (self._upgrade or method == "CONNECT") and parser.should_upgrade():
            flags |= _F_UPGRADE
            if self._cur is not None and method != "CONNECT":
                self._upgrade_body = self._cur
                # the body is read as a plain request's; the upgrade cannot be taken
                hlist = [kv for kv in hlist if kv[0] != b"upgrade"]
            elif method == "GET" and version == "1.1" and _offers_websocket(hlist):
                upgrade = "websocket"
        req = Request(method, path, query, version, Headers(hlist), body, self.scheme, authority)
        req.upgrade = upgrade
        req.hop = self._hop
        if self._cur is None:
            self._reset_message()
        self._ready.append((req, flags))

    def on_chunk_header(self) -> None:
        self._chunk_count += 1

    def on_body(self, data: bytes) -> None:
        body = self._cur
        body.received += len(data)
        body.pending.append(data)

    def on_message_complete(self) -> None:
        body = self._cur
        if body is not None and body is not self._upgrade_body:
            body.done = True
            self._cur = None
            self._reset_message()

    def _reset_message(self) -> None:
        """Parse state for the next message (after the trailers of this one, if any)."""
        self._hlist = []
        self._host = self._cl = self._te = None
        self._expect = self._upgrade = self._hop = self._trailers = False


def _offers_websocket(hlist: list[tuple[bytes, bytes]]) -> bool:
    """``Upgrade`` lists the ``websocket`` protocol (RFC 9110 §7.8 tokens, RFC 6455 §4.1)."""
    for k, v in hlist:
        if k == b"upgrade":
            for token in v.split(b","):
                if token.strip().lower() == b"websocket":
                    return True
    return False


def _clean(value: bytes) -> bool:
    return b"\r" not in value and b"\n" not in value


def _other_target(method: str, url: bytes, host: bytes | None) -> tuple[str, str, bytes | None]:
    """Path, query and raw authority of a request-target that is not origin-form."""
    if method == "CONNECT":
        if b"/" in url or b":" not in url or b"@" in url:
            raise HttpError(400, "bad CONNECT target")
        return "", "", url
    if url == b"*":
        if method != "OPTIONS":
            raise HttpError(400, "'*' target outside OPTIONS")
        return "*", "", host
    low = url[:8].lower()
    if low.startswith(b"http://") or low.startswith(b"https://"):
        rest = url[url.index(b"//") + 2:]
        end = len(rest)
        for sep in (b"/", b"?"):
            i = rest.find(sep)
            if 0 <= i < end:
                end = i
        authority, target = rest[:end], rest[end:]
        if not authority or b"@" in authority:
            raise HttpError(400, "bad absolute-form target")
        if target[:1] != b"/":
            target = b"/" + target
        i = target.find(b"?")
        if i < 0:
            return normalize_path(target.decode("latin-1")), "", authority
        return normalize_path(target[:i].decode("latin-1")), check_query(target[i + 1:].decode("latin-1")), authority
    raise HttpError(400, "bad request-target")
