"""``rewrite`` (DESIGN.md §6): replace the request ``path`` and/or ``query`` (templated) before
it goes upstream. The new path must be origin-form (start with ``/``)."""

from __future__ import annotations

from vane.plugins.base import HttpMiddleware

NEXT = ("next", None)


class Rewrite(HttpMiddleware):
    def run(self, ctx, args):
        req = ctx.request
        if "path" in args:
            path = args["path"]
            if not path.startswith("/") or any(c in path for c in " \r\n\0"):
                raise ValueError(f"rewrite produced an invalid path {path!r}")
            path, sep, query = path.partition("?")
            req.path = path
            if sep:
                req.query = query
        if "query" in args:
            req.query = args["query"].lstrip("?")
        ctx.kv.set("req.path", req.path)
        ctx.kv.set("req.query", req.query)
        ctx.kv.set("req.uri", req.uri)
        return NEXT
