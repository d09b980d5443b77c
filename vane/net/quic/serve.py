"""HTTP/3 on a connection the ``upgrade quic`` node accepted: the L7 side of ``vane.flow.http``."""

from __future__ import annotations

from typing import Any

import gevent

from vane.net.http.message import Request, Response
from vane.net.upstream.websocket import stream_tunnel

from .h3server import H3Limits, H3Server


def serve_h3(service: Any) -> None:
    """Serve the HTTP/3 requests of ``service``'s QUIC connection until it ends."""
    settings = service.settings
    codec: H3Server

    def handle(req: Request) -> tuple[Response, Any]:
        resp, rctx = service.handle(req, req.stream_id or 0)
        if rctx is None:                # reloaded away: the client retries on a new connection
            codec.goaway()
        elif rctx.tunnel is not None:   # extended CONNECT (RFC 9220): the WebSocket rides on the stream
            resp, rctx.tunnel = stream_tunnel(req, resp, rctx.tunnel), None
        return resp, rctx

    def finished(rctx: Any, resp: Response, sent: int, aborted: bool) -> None:
        if rctx is not None:
            service.finished(rctx, resp, sent, aborted)

    limits = H3Limits(settings.sec_max_header_count, settings.sec_body_idle_timeout, settings.sec_send_timeout,
                      settings.sec_max_uri_bytes, settings.sec_max_header_bytes)
    codec = H3Server(service.ctx.stream, handle, finished, limits)
    draining = service.services.draining
    watcher = gevent.spawn(_goaway_on_drain, draining, codec)
    try:
        codec.serve()
    finally:
        watcher.kill(block=False)


def _goaway_on_drain(draining: Any, codec: H3Server) -> None:
    draining.wait()
    codec.goaway()
