"""``respond`` (DESIGN.md §6): answer with ``status``, ``headers``, ``body`` (text) or
``body_base64``; with none of them, flush the response container a ``fetch`` or ``static``
filled (optionally overriding status and headers)."""

from __future__ import annotations

import base64

from vane.engine.outcome import FINISHED
from vane.engine.plugin import LinkEnv, Terminator
from vane.net.http.message import Body, Headers, Response
from vane.net.http.status import plain_response


class Respond(Terminator):
    """Builds the answer; a static input is turned into its status, header fields and body
    once, at link time, and each request gets fresh copies (a later node may edit them)."""

    def __init__(self, node, env: LinkEnv) -> None:
        super().__init__(node, env)
        raw = node.input.raw
        self.flush = not any(k in raw for k in ("body", "body_base64")) and "status" not in raw
        self.static_body = None
        if "body_base64" in raw and "{{" not in raw["body_base64"]:
            self.static_body = base64.b64decode(raw["body_base64"])
        self.template: tuple[int, list, bytes] | None = None
        if node.input.is_static and not self.flush:
            resp = self._build(raw)
            self.template = (resp.status, resp.headers.items_, resp.body.read_all(1 << 62))
            self.resolve_input = False

    def terminate(self, ctx, args):
        template = self.template
        if template is not None:
            status, items, data = template
            ctx.response = Response(status, Headers(list(items)), Body.from_bytes(data))
            return FINISHED
        if self.flush and ctx.response is not None:
            resp = ctx.response
            for k, v in (args.get("headers") or {}).items():
                resp.headers.set(k, str(v))
            return FINISHED
        ctx.response = self._build(args)
        return FINISHED

    def _build(self, args) -> Response:
        status = int(args.get("status", 200))
        if "body_base64" in args:
            body = self.static_body if self.static_body is not None else base64.b64decode(args["body_base64"])
        else:
            body = args.get("body", "")
        resp = plain_response(status, body, args.get("headers"),
                              args.get("content_type") or "text/plain; charset=utf-8")
        if not body and status not in (204, 304):
            resp.body = Body.from_bytes(b"")
        return resp
