"""``rewrite`` (DESIGN.md §6): replace the request ``path`` and/or ``query`` (templated) before
it goes upstream. The new path must be origin-form (start with ``/``) and is normalised like
a received one (``vane.net.http.target``): what later nodes match is what the backend gets.
A path built from client data that cannot be normalised answers 400."""

from __future__ import annotations

from vane.engine.plugin import HttpMiddleware
from vane.net.http.target import check_query, normalize_path

NEXT = ("next", None)


class Rewrite(HttpMiddleware):
    def run(self, ctx, args):
        req = ctx.request
        if "path" in args:
            path = args["path"]
            if not path.startswith("/"):
                raise ValueError(f"rewrite produced a path that does not start with '/': {path!r}")
            path, sep, query = path.partition("?")
            req.path = normalize_path(path)
            if sep:
                req.query = check_query(query)
        if "query" in args:
            req.query = check_query(args["query"].lstrip("?"))
        ctx.kv.set("req.path", req.path)
        ctx.kv.set("req.query", req.query)
        ctx.kv.set("req.uri", req.uri)
        return NEXT
