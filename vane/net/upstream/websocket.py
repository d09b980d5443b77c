"""Asking a backend to switch a request to WebSocket (DESIGN.md §6 ``proxy`` ``websocket``).

Only a request the HTTP/1 parser accepted as an upgrade to ``websocket`` comes here
(``Request.upgrade``: ``Connection: upgrade``, an ``Upgrade`` token ``websocket``, a GET without
a body), or an extended CONNECT over HTTP/2 or HTTP/3 (RFC 8441, RFC 9220), which carries no
``Sec-WebSocket-Key``: the backend gets one of ours. It goes upstream on a fresh HTTP/1.1 connection through the client codec, which owns
the framing (no body, no framing fields from the client) and names ``websocket`` alone in
``Upgrade`` whatever else the client listed; only a ``101`` that switches to ``websocket`` is
accepted. Any other answer comes back as a normal response, and its connection returns to the
pool only if that exchange went through whole.
"""

from __future__ import annotations

import base64
import logging
import os
import socket
from typing import Any, Iterator

import gevent

from vane.net.http.errors import HttpError, UpstreamError
from vane.net.http.message import Body, Headers, Request, Response
from vane.net.plain import PlainStream
from vane.net.upstream.forward import upstream_request
from vane.net.upstream.options import Options, Target
from vane.net.upstream.pool import UpstreamPool

__all__ = ["open_websocket", "stream_tunnel"]

log = logging.getLogger("vane.websocket")

WEBSOCKET = b"websocket"
_TUNNEL_READ = 65536


def open_websocket(pool: UpstreamPool, req: Request, opts: Options, headers: Headers,
                   target: Target | None = None) -> tuple[Response, tuple[Any, bytes] | None]:
    """``(response, None)`` for any answer but a 101 (its body streams from the pooled
    connection), or ``(101, (stream, rest))`` with the upstream stream taken out of the pool
    and the bytes read past the 101. ``target``: the backend (default: the node's upstream).
    Raises ``UpstreamError``."""
    if target is None:
        target = opts.target
    if req.version != "1.1" and headers.getb(b"sec-websocket-key") is None:
        headers.set("sec-websocket-key", base64.b64encode(os.urandom(16)).decode())
        if headers.getb(b"sec-websocket-version") is None:
            headers.set("sec-websocket-version", "13")
    ep = pool.endpoint(target.h1_spec)
    conn = pool.acquire(ep, opts.connect_timeout, fresh=True)
    try:
        conn.idle_timeout = opts.read_timeout
        up = upstream_request(req, target, headers, False)
        if req.version != "1.1":    # the stream's body is the tunnel, not part of the upgrade request
            up = Request(up.method, up.path, up.query, "1.1", up.headers, Body.empty(), up.scheme, up.authority)
        resp, switched = conn.upgrade(up, headers, WEBSOCKET, opts.timeout)
    except BaseException:
        pool.discard(conn)
        raise
    if switched is not None:
        pool.forget(conn)              # the stream left the codec: not the pool's any more
    return resp, switched


def stream_tunnel(req: Request, resp: Response, tunnel: tuple[Any, bytes, float]) -> Response:
    """The answer to an extended CONNECT whose backend switched to WebSocket: a 200 whose
    body is what the backend sends, while a greenlet writes the request body (the client's
    frames) to the backend. The tunnel ends when the backend closes, or the client ends its
    side and the backend then closes, or nothing moves for the tunnel's idle time."""
    upstream, rest, idle = tunnel
    headers = Headers([(k, v) for k, v in resp.headers.items_
                       if k not in (b"sec-websocket-accept", b"upgrade", b"connection")])
    try:
        upstream.settimeout(idle)
    except (AttributeError, OSError):
        pass
    req.body.idle_timeout = idle        # a quiet client is the tunnel's idle time, not a stalled upload

    def client_to_backend() -> None:
        try:
            for chunk in req.body:
                upstream.sendall(chunk)
        except (HttpError, OSError) as exc:
            log.debug("websocket tunnel: client side ended: %s", exc)
        try:
            if upstream.__class__ is PlainStream:
                upstream.shutdown_write()
            else:                       # a TLS socket: FIN under the TLS layer, as before
                upstream.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    pump = gevent.spawn(client_to_backend)

    def end() -> None:
        pump.kill(block=False)
        try:
            upstream.close()
        except OSError:
            pass

    def backend_to_client() -> Iterator[bytes]:
        try:
            if rest:
                yield rest
            while True:
                try:
                    data = upstream.recv(_TUNNEL_READ)
                except TimeoutError:
                    return      # idle: the stream ends
                except OSError as exc:
                    raise UpstreamError(f"websocket backend failed: {exc}") from None
                if not data:
                    return
                yield data
        finally:
            end()

    return Response(200, headers, Body(backend_to_client(), None, close=end))
