"""``proxy`` at L7 (DESIGN.md §6): forward the request to ``upstream`` and stream the answer back.

Request bodies stream upstream as they arrive (unless a node read ``req.body``); answers are
read ahead of the client into the pool's ``response_buffer`` (``vane.net.upstream.readahead``)
so the upstream connection goes back as soon as the backend is done. Response fields are
stripped of hop-by-hop ones. Requests the HTTP/1 parser accepted as WebSocket upgrades are
switched upstream when ``websocket`` is on (the default) and a 101 leaves a tunnel for the
HTTP layer to relay. ``forwarded`` (default on) adds X-Forwarded-* and ``Forwarded``.
Upstream failure answers 502, a timeout 504, a client past its share of the backend 503; the
reason goes to the flow log and one warning to the log.

``upstream`` may be an upstream group (a list of backends, or a config.json group's name):
each request goes to the backend the group's ``balance`` picks (``vane.net.upstream.balanced``:
safe retries on another backend, passive health); with no backend available the answer is
503 with ``Retry-After``, at once.
"""

from __future__ import annotations

from time import perf_counter

from vane.engine.outcome import FINISHED
from vane.engine.plugin import LinkEnv, Terminator
from vane.net.http.errors import UpstreamError
from vane.net.upstream.balanced import exchange_balanced
from vane.net.upstream.forward import exchange, strip_response, upstream_headers
from vane.net.upstream.group import NoBackend
from vane.net.upstream.pool import pool_for
from vane.net.upstream.readahead import read_ahead
from vane.net.upstream.websocket import open_websocket

from .forwarding import failed, failed_midway, hash_key, node_options, peer_ip, retried


class L7Proxy(Terminator):
    def __init__(self, node, env: LinkEnv) -> None:
        super().__init__(node, env)
        self.source = node_options(node, env, forwarded_default=True)
        self.static = self.source.static
        if self.static is not None:
            self.resolve_input = False     # nothing to resolve per request (a hash_key is resolved here)
        self.pool = pool_for(env.services)
        self.key_limit = getattr(env.settings, "max_template_result_size", 65536)

    def terminate(self, ctx, args):
        opts = self.static or self.source.get(args)
        req = ctx.request
        if req.method == "CONNECT":         # a reverse proxy, not a forward one
            ctx.trajectory.note_error("proxy: CONNECT is not forwarded")
            return ctx.respond_status(405)
        ip = peer_ip(ctx)
        headers = upstream_headers(req, ip, opts)
        label = opts.label
        websocket = opts.websocket and req.upgrade == "websocket"
        t0 = perf_counter()
        try:
            if opts.group is not None:
                resp, conn, backend = exchange_balanced(self.pool, req, opts, headers, ip or None,
                                                        hash_key(ctx, opts, self.key_limit), retried, ctx,
                                                        websocket)
                label = backend.label
                if websocket:
                    tunnel, conn = conn, None
            elif websocket:
                resp, tunnel = open_websocket(self.pool, req, opts, headers)
            else:
                resp, conn = exchange(self.pool, req, opts, headers, ip or None)
            if websocket:
                if tunnel is not None:
                    strip_response(resp, keep_upgrade=True)
                    ctx.response = resp
                    ctx.tunnel = (*tunnel, opts.tunnel_idle)
                    return self._done(ctx, label, t0)
            elif conn.body_cut is not None:
                ctx.trajectory.note_error(f"upstream {label} answered {resp.status} before taking "
                                          f"the whole request body ({conn.body_cut})")
        except NoBackend as exc:
            return ctx.respond_status(failed(ctx, opts, exc), None, {"retry-after": exc.retry_after})
        except UpstreamError as exc:
            return ctx.respond_status(failed(ctx, opts, exc))
        strip_response(resp)
        try:
            resp.body = read_ahead(resp.body, self.pool.response_buffer, failed_midway, ctx, opts)
        except UpstreamError as exc:        # the backend broke off before the client got a byte
            return ctx.respond_status(exc.status)
        ctx.response = resp
        return self._done(ctx, label, t0)

    @staticmethod
    def _done(ctx, label, t0):
        ctx.upstream = label
        ctx.upstream_secs = perf_counter() - t0
        conn = ctx.conn
        if conn is not None:
            conn.upstream = label
        return FINISHED
