"""``headers`` (DESIGN.md §6): ``request`` / ``response`` each with ``set``, ``add``, ``remove``.

Request edits apply to the request going upstream; response edits apply to the response
container (after ``fetch``) or are kept and applied to whatever response the flow produces.
"""

from __future__ import annotations

from vane.net.http.message import Headers
from vane.plugins.base import HttpMiddleware

NEXT = ("next", None)


def apply(headers: Headers, ops: dict) -> None:
    for name in ops.get("remove") or ():
        headers.remove(name)
    for name, value in (ops.get("set") or {}).items():
        headers.set(name, _clean(value))
    for name, value in (ops.get("add") or {}).items():
        headers.add(name, _clean(value))


def _clean(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    if "\r" in text or "\n" in text or "\0" in text:
        raise ValueError("header value contains a control character")
    return text


class HeadersPlugin(HttpMiddleware):
    def run(self, ctx, args):
        if "request" in args:
            apply(ctx.request.headers, args["request"])
        if "response" in args:
            if ctx.response is not None:
                apply(ctx.response.headers, args["response"])
            else:
                ctx.pending_response_headers.append(args["response"])
        return NEXT
