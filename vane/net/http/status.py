"""Status codes in words and the plain-text answers vane writes itself (errors, denials).

The one copy of reason phrases (from ``http.HTTPStatus``) and of a short ``text/plain``
response, for the HTTP/1 and HTTP/2 servers, the HTTP layer and the plugins alike.
"""

from __future__ import annotations

from http import HTTPStatus

from .message import Body, Headers, Response

__all__ = ["PHRASES", "plain_response", "reason"]

PHRASES: dict[int, str] = {int(s): s.phrase for s in HTTPStatus}
PHRASES[413] = "Content Too Large"          # RFC 9110's name; Python still says "Request Entity Too Large"
_TEXT_PLAIN = b"text/plain; charset=utf-8"


def reason(status: int) -> str:
    """The standard phrase for ``status`` ("" when it has none)."""
    return PHRASES.get(status, "")


def plain_response(status: int, body: str | bytes | None = None, headers: dict | None = None,
                   content_type: str | None = None) -> Response:
    """A response with a short text body: ``body``, or "<status> <phrase>" when None (no body
    for 1xx, 204 and 304); ``headers`` are set as given."""
    if body is None:
        body = "" if status in (204, 304) or status < 200 else f"{status} {reason(status)}\n"
    data = body.encode("utf-8") if isinstance(body, str) else body
    items = []
    if data:
        items.append((b"content-type", content_type.encode("latin-1") if content_type else _TEXT_PLAIN))
    out = Headers(items)
    for k, v in (headers or {}).items():
        out.set(k, str(v))
    return Response(status, out, Body.from_bytes(data))
