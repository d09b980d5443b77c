"""Asking a backend to switch a request to WebSocket (DESIGN.md §6 ``proxy`` ``websocket``).

Only a request the HTTP/1 parser accepted as an upgrade to ``websocket`` comes here
(``Request.upgrade``: ``Connection: upgrade``, an ``Upgrade`` token ``websocket``, a GET without
a body). It goes upstream on a fresh HTTP/1.1 connection through the client codec, which owns
the framing (no body, no framing fields from the client) and names ``websocket`` alone in
``Upgrade`` whatever else the client listed; only a ``101`` that switches to ``websocket`` is
accepted. Any other answer comes back as a normal response, and its connection returns to the
pool only if that exchange went through whole.
"""

from __future__ import annotations

from typing import Any

from vane.net.http.message import Headers, Request, Response
from vane.net.upstream.forward import upstream_request
from vane.net.upstream.options import Options, Target
from vane.net.upstream.pool import UpstreamPool

__all__ = ["open_websocket"]

WEBSOCKET = b"websocket"


def open_websocket(pool: UpstreamPool, req: Request, opts: Options, headers: Headers,
                   target: Target | None = None) -> tuple[Response, tuple[Any, bytes] | None]:
    """``(response, None)`` for any answer but a 101 (its body streams from the pooled
    connection), or ``(101, (stream, rest))`` with the upstream stream taken out of the pool
    and the bytes read past the 101. ``target``: the backend (default: the node's upstream).
    Raises ``UpstreamError``."""
    if target is None:
        target = opts.target
    ep = pool.endpoint(target.h1_spec)
    conn = pool.acquire(ep, opts.connect_timeout, fresh=True)
    try:
        conn.idle_timeout = opts.read_timeout
        resp, switched = conn.upgrade(upstream_request(req, target, headers, False), headers, WEBSOCKET,
                                      opts.timeout)
    except BaseException:
        pool.discard(conn)
        raise
    if switched is not None:
        pool.forget(conn)              # the stream left the codec: not the pool's any more
    return resp, switched
