"""An HTTP/2 request head checked and turned into a ``Request`` (RFC 9113 §8.1-§8.3).

The server codec runs h2 with its own inbound header validation off and calls
``request_head`` instead, so that a malformed request is a stream error answered on that
stream (400, 431) and never a connection error that takes the other streams down. The same
rules as for HTTP/1 apply to what is routed and forwarded: the path and the authority go
through ``vane.net.http.target``; the method must be a token; the header count is limited.

Malformed (400): an upper-case, empty or non-token field name; a value holding NUL, CR or LF
or starting or ending with whitespace; a connection-specific field (``connection``,
``keep-alive``, ``proxy-connection``, ``transfer-encoding``, ``upgrade``) or ``te`` other than
``trailers``; an unknown, repeated or late pseudo-header; a missing ``:method``, ``:scheme`` or
``:path`` (``:authority`` for CONNECT); a ``:path`` that is neither origin-form nor ``*`` for
OPTIONS; ``host`` and ``:authority`` naming different authorities; a ``content-length`` that
is not digits or disagrees with another one; ``:protocol`` outside a CONNECT.

Extended CONNECT (RFC 8441, RFC 9220): a CONNECT with ``:protocol`` ``websocket`` and its
``:scheme``, ``:path`` and ``:authority`` becomes the WebSocket request the flows see from
HTTP/1.1: method ``GET``, ``upgrade`` ``websocket``; its body is the client's side of the
tunnel. Another ``:protocol`` is answered 501.
"""

from __future__ import annotations

import re

from vane.net.http.errors import HttpError
from vane.net.http.limits import check_field_count, check_target_length
from vane.net.http.message import FORWARDING_FIELDS, Body, HeaderList, Headers, Request
from vane.net.http.target import check_query, is_token, normalize_authority, normalize_path

__all__ = ["request_head", "check_trailers"]

_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path", b":protocol"})
_CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                                  b"upgrade"})
_SPECIAL = _CONNECTION_SPECIFIC | FORWARDING_FIELDS | {b"te", b"host", b"content-length", b"cookie"}
_bad_value = re.compile(rb"[\r\n\x00]|\A[ \t]|[ \t]\Z").search
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE")}
_SCHEMES = {b"https": "https", b"http": "http"}
_NAME_CHARS = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")
_CACHE_MAX = 4096
_good_names: set[bytes] = set()


def _check_name(name: bytes) -> None:
    if name in _good_names:
        return
    if not name or not _NAME_CHARS.issuperset(name):
        raise HttpError(400, f"invalid header field name {name[:64]!r}")
    if len(_good_names) < _CACHE_MAX:
        _good_names.add(name)


def _check_value(value: bytes) -> None:
    if value and _bad_value(value) is not None:
        raise HttpError(400, "invalid header field value")


def request_head(headers: HeaderList, default_scheme: str, max_fields: int,
                 body: Body | None = None, max_target: int = 8192) -> tuple[Request, int | None]:
    """The ``Request`` (with ``body``, else an empty one) and the announced content length of
    a received header block; raises ``HttpError``."""
    check_field_count(len(headers), max_fields)
    method = path = scheme = authority = host = length = protocol = None
    items: HeaderList = []
    cookies: list[bytes] | None = None
    regular = False
    hop = False         # te or a forwarding field: what a forwarder must look at (else it need not)
    good = _good_names
    for name, value in headers:
        if name[:1] == b":":
            if regular or name not in _PSEUDO:
                raise HttpError(400, f"unexpected pseudo-header {name[:32]!r}")
            if name == b":method":
                if method is not None:
                    raise HttpError(400, "repeated :method")
                method = value
            elif name == b":path":
                if path is not None:
                    raise HttpError(400, "repeated :path")
                check_target_length(len(value), max_target)
                path = value
            elif name == b":authority":
                if authority is not None:
                    raise HttpError(400, "repeated :authority")
                authority = value
            elif name == b":protocol":
                if protocol is not None:
                    raise HttpError(400, "repeated :protocol")
                protocol = value
            else:
                if scheme is not None:
                    raise HttpError(400, "repeated :scheme")
                scheme = value
            continue
        regular = True
        if name not in good:
            _check_name(name)
        if value and _bad_value(value) is not None:
            raise HttpError(400, "invalid header field value")
        if name not in _SPECIAL:
            items.append((name, value))
            continue
        if name in _CONNECTION_SPECIFIC:
            raise HttpError(400, f"connection-specific field {name.decode()!r} in an HTTP/2 request")
        if name == b"te":
            if value.lower() != b"trailers":
                raise HttpError(400, "te other than trailers")
            hop = True
        elif name in FORWARDING_FIELDS:
            hop = True
        elif name == b"host":
            if host is not None:
                raise HttpError(400, "several host fields")
            host = value
            continue
        elif name == b"content-length":
            if not value.isdigit() or (length is not None and int(value) != length):
                raise HttpError(400, "invalid content-length")
            length = int(value)
        elif name == b"cookie":
            # RFC 9113 §8.2.3: the crumbs travel as one field to an HTTP/1.1 hop
            if cookies is None:
                cookies = [value]
                items.append((name, value))
            else:
                cookies.append(value)
            continue
        items.append((name, value))
    if method is None:
        raise HttpError(400, "missing :method")
    text_method = _METHODS.get(method)
    if text_method is None:
        text_method = method.decode("latin-1")
        if not is_token(text_method):
            raise HttpError(400, "the method is not a token")
    if authority is not None and host is not None and normalize_authority(authority) != normalize_authority(host):
        raise HttpError(400, ":authority and host name different authorities")
    raw_authority = authority if authority is not None else host
    if protocol is not None:
        if text_method != "CONNECT" or path is None or scheme is None or authority is None:
            raise HttpError(400, ":protocol outside an extended CONNECT")
        if protocol != b"websocket":
            raise HttpError(501, "extended CONNECT for an unsupported protocol")
        text_method = "GET"
    if text_method == "CONNECT":
        if path is not None or scheme is not None or raw_authority is None:
            raise HttpError(400, "malformed CONNECT request")
        target, query, auth = "", "", raw_authority.decode("latin-1")
    else:
        if path is None or scheme is None:
            raise HttpError(400, "missing :path or :scheme")
        if path == b"/":
            target, query = "/", ""
        else:
            raw_path, _, raw_query = path.partition(b"?")
            if raw_path == b"*" and text_method == "OPTIONS" and not raw_query:
                target = "*"
            elif raw_path[:1] == b"/":
                target = normalize_path(raw_path.decode("latin-1"))
            else:
                raise HttpError(400, ":path is not origin-form")
            query = check_query(raw_query.decode("latin-1")) if raw_query else ""
        auth = normalize_authority(raw_authority) if raw_authority is not None else ""
    if cookies is not None and len(cookies) > 1:
        joined = b"; ".join(cookies)
        items = [(k, joined if k == b"cookie" else v) for k, v in items]
    text_scheme = (_SCHEMES.get(scheme) or scheme.decode("latin-1")) if scheme else default_scheme
    request = Request(text_method, target, query, "2", Headers(items), body, text_scheme, auth)
    request.hop = hop
    if protocol is not None:
        request.upgrade = "websocket"
    return request, length


def check_trailers(trailers: HeaderList, max_fields: int) -> None:
    """Trailers may hold no pseudo-header and follow the field rules; raises ``HttpError``."""
    check_field_count(len(trailers), max_fields, "trailer")
    for name, value in trailers:
        if name[:1] == b":":
            raise HttpError(400, "pseudo-header in trailers")
        _check_name(name)
        _check_value(value)
