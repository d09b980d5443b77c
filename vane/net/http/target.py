"""Request targets as vane routes and forwards them: the one place they are checked and normalised.

The HTTP/1 and HTTP/2 servers call these once per request, before any rule runs, and the
request carries only the result: what the rules match (``req.path``, ``req.host``) is exactly
what goes upstream, so a backend has nothing left to normalise in a way vane did not see.

Paths: percent-encoded unreserved characters are decoded (``%61`` -> ``a``), the hex digits of
every other escape are upper-cased, runs of ``/`` are merged and ``.`` / ``..`` segments
removed (RFC 3986 §5.2.4). Refused with 400, because no normalisation can know how the backend
would split them: an encoded ``/``, ``\\`` or NUL (``%2F`` ``%5C`` ``%00``), a malformed escape,
a space, a control character or ``#``, and the path-parameter forms of dot segments
(``..;x``, ``.;x``) that servlet containers treat as ``..``.

Authorities: ``host[:port]`` with a host of letters, digits, ``-`` ``.`` ``_`` ``~`` or a
bracketed IPv6 literal, and a port of at most five digits up to 65535. The host is lower-cased
and a trailing dot dropped; anything else (``,`` ``@`` ``/``, spaces, ...) is refused.
"""

from __future__ import annotations

import re

from .errors import HttpError

__all__ = ["check_query", "normalize_authority", "normalize_path", "is_token"]

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")
_REFUSED_ESCAPES = frozenset({0x00, 0x2F, 0x5C})
# What a path may not hold raw: controls, space, DEL, '#'.
_bad_path_char = re.compile("[\x00-\x20\x7f#]").search
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._~")
_V6_CHARS = frozenset("0123456789abcdef:.")
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")

_CACHE_MAX = 4096
_authorities: dict[bytes, str] = {}
_tokens: dict[str, bool] = {}


def normalize_path(path: str) -> str:
    """The normalised form of an origin-form path (no query); raises ``HttpError(400)``."""
    if "%" in path:
        path = _decode_unreserved(path)
    if _bad_path_char(path) is not None:
        raise HttpError(400, "control character, space or '#' in the request path")
    if "//" in path or "/." in path:
        path = _remove_dot_segments(path)
    return path


def check_query(query: str) -> str:
    """``query`` itself; raises ``HttpError(400)`` for a control character, a space or ``#``."""
    if _bad_path_char(query) is not None:
        raise HttpError(400, "control character, space or '#' in the query")
    return query


def _decode_unreserved(path: str) -> str:
    parts = path.split("%")
    out = [parts[0]]
    for part in parts[1:]:
        digits = part[:2]
        if len(digits) < 2 or digits[0] not in _HEX or digits[1] not in _HEX:
            raise HttpError(400, "malformed percent-escape in the request path")
        code = int(digits, 16)
        if code in _REFUSED_ESCAPES:
            raise HttpError(400, "encoded '/', '\\' or NUL in the request path")
        char = chr(code)
        out.append((char if char in _UNRESERVED else "%" + digits.upper()) + part[2:])
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    segments = path.split("/")
    out: list[str] = []
    for seg in segments[1:]:
        if seg == "" or seg == ".":
            continue
        if seg == "..":
            if out:
                out.pop()
            continue
        if seg[:1] == "." and (seg[1:2] == ";" or seg[:3] == "..;"):
            raise HttpError(400, "dot segment with parameters in the request path")
        out.append(seg)
    last = segments[-1]
    tail = "/" if out and (last == "" or last == "." or last == "..") else ""
    return "/" + "/".join(out) + tail


def normalize_authority(raw: bytes) -> str:
    """``host[:port]`` lower-cased without a trailing dot; raises ``HttpError(400)``."""
    done = _authorities.get(raw)
    if done is not None:
        return done
    text = raw.decode("latin-1").lower()
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[: end + 1], text[end + 1:]
        if end < 3 or not _V6_CHARS.issuperset(host[1:-1]) or ":" not in host:
            raise HttpError(400, "malformed IPv6 literal in the authority")
    else:
        host, sep, port = text.partition(":")
        rest = sep + port
        if host.endswith("."):
            host = host[:-1]
        if not _HOST_CHARS.issuperset(host):
            raise HttpError(400, "invalid character in the request's host")
    if rest:
        port = rest[1:]
        if rest[0] != ":" or (port and (len(port) > 5 or not port.isdigit() or int(port) > 65535)):
            raise HttpError(400, "invalid port in the request's host")
        if not port:
            rest = ""
    result = host + rest
    if len(_authorities) >= _CACHE_MAX:
        _authorities.clear()
    _authorities[raw] = result
    return result


def is_token(text: str) -> bool:
    """An RFC 9110 token (a method name, for instance)."""
    known = _tokens.get(text)
    if known is None:
        known = bool(text) and _TOKEN_CHARS.issuperset(text)
        if len(_tokens) >= _CACHE_MAX:
            _tokens.clear()
        _tokens[text] = known
    return known
