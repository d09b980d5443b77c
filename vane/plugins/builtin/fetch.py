"""``fetch`` (DESIGN.md §6): send the request upstream and put the answer in the response container.

``res.status``, ``res.header.*`` and ``res.body`` then read it, ``headers`` may edit it and a
later ``respond`` flushes it. Branch ``success`` when a response arrived (any status),
``failure`` when none did (``error`` says why; 502/504 reasons as for ``proxy``, 503 when no
backend of an upstream group is available).
"""

from __future__ import annotations

from vane.engine.plugin import HttpMiddleware, LinkEnv
from vane.net.http.errors import HttpError, UpstreamError
from vane.net.http.message import Body
from vane.net.upstream.balanced import exchange_balanced
from vane.net.upstream.forward import GuardedBody, exchange, strip_response, upstream_headers
from vane.net.upstream.pool import pool_for

from .forwarding import client_failed, failed, hash_key, node_options, peer_ip, retried

SUCCESS = ("success", None)


class Fetch(HttpMiddleware):
    def __init__(self, node, env: LinkEnv) -> None:
        super().__init__(node, env)
        self.source = node_options(node, env, forwarded_default=False)
        self.static = self.source.static
        if self.static is not None:
            self.resolve_input = False
        self.pool = pool_for(env.services)
        self.key_limit = getattr(env.settings, "max_template_result_size", 65536)

    def run(self, ctx, args):
        opts = self.static or self.source.get(args)
        req = ctx.request
        if req.method == "CONNECT":
            return "failure", {"error": "CONNECT is not forwarded"}
        ip = peer_ip(ctx)
        headers = upstream_headers(req, ip, opts)
        try:
            if opts.group is not None:
                resp, _, _ = exchange_balanced(self.pool, req, opts, headers, ip or None,
                                               hash_key(ctx, opts, self.key_limit), retried, ctx)
            else:
                resp, _ = exchange(self.pool, req, opts, headers, ip or None)
        except UpstreamError as exc:
            status = failed(ctx, opts, exc, "fetch")
            return "failure", {"error": f"{status} {exc}"}
        except HttpError as exc:
            client_failed(ctx, exc)
            return "failure", {"error": f"client: {exc}"}
        strip_response(resp)
        if resp.body.length == 0:
            resp.body.close()              # nothing to read: the connection goes back now
            resp.body = Body.empty()
        else:
            resp.body = GuardedBody(resp.body)
        previous = ctx.response
        if previous is not None:
            previous.body.close()
        ctx.response = resp
        return SUCCESS
