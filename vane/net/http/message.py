"""HTTP request/response model shared by the HTTP/1 and HTTP/2 codecs and the L7 plugins.

Header names are stored lower-cased as ``bytes``, values as ``bytes``, in arrival order, so
the proxy path never decodes what it only forwards; ``str`` accessors decode latin-1 on demand.
A body is a ``Body``: an iterator of ``bytes`` chunks with an optional known length, consumed
once, so bodies stream end to end unless a node asks for ``req.body`` / ``res.body``.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Iterable, Iterator

HeaderList = list[tuple[bytes, bytes]]


class BodyTooLarge(Exception):
    """A buffered body passed its size limit (answered 413)."""


class Headers:
    """Ordered, multi-valued header list; names lower-case bytes."""

    __slots__ = ("items_",)

    def __init__(self, items: HeaderList | None = None) -> None:
        self.items_: HeaderList = items if items is not None else []

    def get(self, name: str, default: str | None = None) -> str | None:
        key = name.lower().encode("latin-1")
        for k, v in self.items_:
            if k == key:
                return v.decode("latin-1")
        return default

    def get_all(self, name: str) -> list[str]:
        key = name.lower().encode("latin-1")
        return [v.decode("latin-1") for k, v in self.items_ if k == key]

    def getb(self, key: bytes) -> bytes | None:
        """Fast path: ``key`` must already be lower-case bytes."""
        for k, v in self.items_:
            if k == key:
                return v
        return None

    def __contains__(self, name: str) -> bool:
        return self.getb(name.lower().encode("latin-1")) is not None

    def set(self, name: str, value: str) -> None:
        key = name.lower().encode("latin-1")
        self.items_ = [(k, v) for k, v in self.items_ if k != key]
        self.items_.append((key, value.encode("latin-1")))

    def add(self, name: str, value: str) -> None:
        self.items_.append((name.lower().encode("latin-1"), value.encode("latin-1")))

    def remove(self, name: str) -> None:
        key = name.lower().encode("latin-1")
        self.items_ = [(k, v) for k, v in self.items_ if k != key]

    def apply(self, ops: dict) -> None:
        """The ``headers`` plugin's edits: ``remove`` names, then ``set``, then ``add``."""
        for name in ops.get("remove") or ():
            self.remove(name)
        for name, value in (ops.get("set") or {}).items():
            self.set(name, field_value(value))
        for name, value in (ops.get("add") or {}).items():
            self.add(name, field_value(value))

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(self.items_)

    def __len__(self) -> int:
        return len(self.items_)

    def copy(self) -> "Headers":
        return Headers(list(self.items_))

    def __repr__(self) -> str:
        return f"Headers({self.items_!r})"


def field_value(value: object) -> str:
    """``value`` as a header field value; raises ValueError if it holds CR, LF or NUL (it
    would end the field, or the head, early)."""
    text = value if isinstance(value, str) else str(value)
    if "\r" in text or "\n" in text or "\0" in text:
        raise ValueError("header value contains a control character")
    return text


class Body:
    """A one-shot stream of body chunks.

    ``length`` is the byte count when known (Content-Length, or a buffered body), else None
    (chunked / HTTP/2 without content-length). ``trailers`` may be filled by the codec once the
    stream ends. ``close`` releases the source (e.g. an upstream connection) when the consumer
    stops early.
    """

    __slots__ = ("_chunks", "length", "trailers", "_buffered", "_close", "idle_timeout")

    def __init__(self, chunks: Iterable[bytes] = (), length: int | None = None,
                 close: Callable[[], None] | None = None) -> None:
        self._chunks: Iterator[bytes] | None = iter(chunks)
        self.length = length
        self.trailers: HeaderList | None = None
        self._buffered: bytes | None = None
        self._close = close
        # how long a streamed request body may stay silent, when not the codec's own limit
        # (a WebSocket carried on an HTTP/2 or HTTP/3 stream: the tunnel's idle time)
        self.idle_timeout: float | None = None

    @classmethod
    def from_bytes(cls, data: bytes) -> "Body":
        body = cls((), len(data))
        body._buffered = data
        body._chunks = None
        return body

    @classmethod
    def empty(cls) -> "Body":
        return cls.from_bytes(b"")

    @property
    def is_buffered(self) -> bool:
        return self._buffered is not None

    def __iter__(self) -> Iterator[bytes]:
        if self._buffered is not None:
            if self._buffered:
                yield self._buffered
            return
        chunks, self._chunks = self._chunks, None
        if chunks is None:
            return
        for chunk in chunks:
            if chunk:
                yield chunk

    def read_all(self, limit: int) -> bytes:
        """Buffer the whole body (at most ``limit`` bytes) and keep it for re-reading."""
        if self._buffered is not None:
            if len(self._buffered) > limit:
                raise BodyTooLarge(len(self._buffered))
            return self._buffered
        if self.length is not None and self.length > limit:
            self.close()
            raise BodyTooLarge(self.length)
        parts: list[bytes] = []
        size = 0
        for chunk in self:
            size += len(chunk)
            if size > limit:
                self.close()
                raise BodyTooLarge(size)
            parts.append(chunk)
        self._buffered = b"".join(parts)
        self.length = size
        return self._buffered

    def splice_to(self, io: Any, head: bytes, timeout: float) -> int | None:
        """Send ``head``, then this body, with the kernel moving the body from the socket it
        arrives on straight to ``io`` (a plain stream): the bytes sent, head included. None,
        with nothing sent, when the body cannot move that way (this default: its chunks pass
        through Python). Only before the body was read; ``timeout`` bounds each wait to write."""
        return None

    def close(self) -> None:
        self._chunks = None
        if self._close is not None:
            close, self._close = self._close, None
            close()


class FileBody(Body):
    """``length`` bytes of an open file from ``offset``, read with ``pread``; the file closes
    when the body ends. A codec writing to a plain socket takes the region (``take_region``)
    and lets the kernel copy it (``sendfile``) instead of passing chunks through Python."""

    __slots__ = ("_file", "_offset", "_started")

    CHUNK = 65536

    def __init__(self, file: Any, offset: int, length: int) -> None:
        super().__init__((), length, file.close)
        self._file = file
        self._offset = offset
        self._started = False
        self._chunks = self._read()

    def take_region(self) -> tuple[int, int, int] | None:
        """``(fd, offset, length)`` when nothing was read yet; the caller sends the region and
        then closes the body. None once chunks were read or the body was buffered."""
        if self._started or self._buffered is not None or self._chunks is None:
            return None
        self._started = True
        self._chunks = None
        return self._file.fileno(), self._offset, self.length or 0

    def _read(self) -> Iterator[bytes]:
        self._started = True
        fd = self._file.fileno()
        pos = self._offset
        left = self.length or 0
        try:
            while left > 0:
                data = os.pread(fd, min(self.CHUNK, left), pos)
                if not data:
                    raise OSError("file shrank while being served")
                pos += len(data)
                left -= len(data)
                yield data
        finally:
            self.close()


def host_of(authority: str) -> str:
    """The host part of a normalised authority (IPv6 literals keep their brackets)."""
    if authority.startswith("["):
        return authority[: authority.find("]") + 1]
    return authority.partition(":")[0]


class Request:
    """One HTTP request as received (or as sent upstream after rewriting)."""

    __slots__ = ("method", "scheme", "authority", "host", "path", "query", "version", "headers", "body",
                 "stream_id", "upgrade", "hop")

    def __init__(self, method: str, path: str, query: str = "", version: str = "1.1",
                 headers: Headers | None = None, body: Body | None = None, scheme: str = "http",
                 authority: str = "", stream_id: int | None = None) -> None:
        self.method = method
        self.scheme = scheme
        self.authority = authority  # normalised host[:port] (Host, :authority or the target's)
        self.host = host_of(authority)  # without the port, lower-cased, no trailing dot
        self.path = path            # normalised path (vane.net.http.target), no query
        self.query = query          # raw query, no leading '?'
        self.version = version      # "1.0" | "1.1" | "2"
        self.headers = headers if headers is not None else Headers()
        self.body = body if body is not None else Body.empty()
        self.stream_id = stream_id
        self.upgrade: str | None = None  # "websocket": an HTTP/1.1 upgrade the parser accepted
        self.hop = True             # may hold hop-by-hop fields (a parser that knows says False)

    @property
    def uri(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path


class Response:
    """An HTTP response: built by a plugin, or received from an upstream."""

    __slots__ = ("status", "reason", "headers", "body", "hop")

    def __init__(self, status: int = 200, headers: Headers | None = None, body: Body | None = None,
                 reason: str = "") -> None:
        self.status = status
        self.reason = reason
        self.headers = headers if headers is not None else Headers()
        self.body = body if body is not None else Body.empty()
        self.hop = True             # may hold hop-by-hop fields (a parser that knows says False)


def accepts_trailers(te: bytes) -> bool:
    """A ``TE`` value lists ``trailers`` (RFC 9110 §10.1.4): the client takes trailer fields."""
    return any(part.split(b";", 1)[0].strip().lower() == b"trailers" for part in te.split(b","))


# RFC 9110 §7.6.1 plus the legacy names every proxy strips.
def expects_continue(expect: bytes | None) -> bool:
    """Whether a request's ``Expect`` value asks for ``100 (Continue)`` before the body
    (RFC 9110 §10.1.1). Every codec answers it when the flow first reads the body."""
    return expect is not None and expect.strip().lower() == b"100-continue"


HOP_BY_HOP: frozenset[bytes] = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
    b"upgrade", b"proxy-authenticate", b"proxy-authorization",
})


# Fields a forwarder rewrites: hop-by-hop ones and the forwarding chain.
FORWARDING_FIELDS: frozenset[bytes] = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                                                  b"forwarded"})
HOP_OR_FORWARDING: frozenset[bytes] = HOP_BY_HOP | FORWARDING_FIELDS

# fields a trailer section may not carry (RFC 9110 §6.5.1: framing, routing, authentication,
# response control, how to process the content)
NOT_IN_TRAILERS: frozenset[bytes] = HOP_BY_HOP | {
    b"content-length", b"host", b"content-type", b"content-encoding", b"content-range",
    b"authorization", b"cache-control"}
_bad_trailer_value = re.compile(rb"[\r\n\x00]").search
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+\Z").match


def trailer_fields(trailers: HeaderList) -> HeaderList:
    """The trailer fields that may be forwarded, for every HTTP version: no pseudo-header,
    none of ``NOT_IN_TRAILERS``, lower-case token names, values free of CR, LF and NUL."""
    return [(k, v) for k, v in trailers
            if k not in NOT_IN_TRAILERS and _TOKEN(k) is not None and _bad_trailer_value(v) is None]


_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close", b"Keep-Alive", b"Close", b"upgrade", b"Upgrade"})

# End-to-end fields a ``Connection`` token never removes: the authority requests are routed
# on, the framing, and the forwarding chain a trusted proxy in front of vane reports.
KEEP_END_TO_END: frozenset[bytes] = frozenset({
    b"host", b"content-length", b"transfer-encoding", b"x-forwarded-for", b"x-forwarded-proto",
    b"x-forwarded-host", b"forwarded", b"x-real-ip",
})


def connection_tokens(items: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """Field names listed in ``Connection`` (RFC 9110 §7.6.1) that may be dropped as
    hop-by-hop; empty for the usual values. Never one of ``KEEP_END_TO_END``."""
    tokens: set[bytes] = set()
    for k, v in items:
        if k == b"connection" and v not in _PLAIN_CONNECTION:
            for token in v.split(b","):
                token = token.strip().lower()
                if token and token not in KEEP_END_TO_END:
                    tokens.add(token)
    return tokens


def without_hop_by_hop(items: HeaderList, drop: frozenset[bytes] = HOP_BY_HOP,
                       keep_upgrade: bool = False) -> HeaderList:
    """``items`` less the hop-by-hop fields in ``drop`` and those named in ``Connection``.

    Returns ``items`` itself when there is nothing to remove (the common case: no copy).
    """
    if keep_upgrade:
        drop = drop - {b"upgrade"}
    out = [kv for kv in items if kv[0] not in drop]
    if len(out) == len(items):
        return items
    tokens = connection_tokens(items)
    if keep_upgrade:
        tokens.discard(b"upgrade")
    if tokens:
        out = [kv for kv in out if kv[0] not in tokens]
    return out
