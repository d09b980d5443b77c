"""``headers`` (DESIGN.md §6): ``request`` / ``response`` each with ``set``, ``add``, ``remove``.

Request edits apply to the request going upstream. Response edits apply to the response
container when a ``fetch`` already filled it, else to whatever response the flow ends with.
"""

from __future__ import annotations

from vane.engine.plugin import HttpMiddleware

NEXT = ("next", None)


class HeadersPlugin(HttpMiddleware):
    def run(self, ctx, args):
        if "request" in args:
            ctx.request.headers.apply(args["request"])
        if "response" in args:
            if ctx.response is not None:
                ctx.response.headers.apply(args["response"])
            elif ctx.response_edits is None:
                ctx.response_edits = [args["response"]]
            else:
                ctx.response_edits.append(args["response"])
        return NEXT
