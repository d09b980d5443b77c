"""WebSocket through the L7 ``proxy`` (DESIGN.md §6 ``websocket``): HTTP/1.1 upgrade, then a tunnel.

Only a request the HTTP/1 parser accepted as an upgrade to ``websocket`` comes here
(``Request.upgrade``: ``Connection: upgrade``, an ``Upgrade`` token ``websocket``, a GET without
a body). It goes upstream on a fresh HTTP/1.1 connection through the client codec, which
owns the framing (no body, no framing fields from the client) and names ``websocket`` alone
in ``Upgrade`` whatever else the client listed; only a ``101`` that switches to
``websocket`` is accepted. Then the 101 is relayed, both connections are detached from their
codecs and the bytes are tunnelled both ways (``vane.net.tunnel.relay``), bytes already read
past either head going first. Any other answer is passed back as a normal response, and the
upstream connection goes back to the pool only if that exchange went through whole.
"""

from __future__ import annotations

from typing import Any

from vane.engine.outcome import FINISHED, Outcome
from vane.net.tunnel import relay
from vane.net.upstream.forward import strip_response, upstream_headers, upstream_request
from vane.net.upstream.options import Options
from vane.net.upstream.pool import UpstreamPool

WEBSOCKET = b"websocket"


def proxy_websocket(pool: UpstreamPool, ctx: Any, opts: Options) -> Outcome:
    """Forward the upgrade; on 101 tunnel until either side ends. Raises ``UpstreamError``."""
    req = ctx.request
    headers = upstream_headers(ctx, opts)
    ep = pool.endpoint(opts.h1_spec)
    conn = pool.acquire(ep, opts.connect_timeout, fresh=True)
    try:
        conn.idle_timeout = opts.read_timeout
        conn.send_request(upstream_request(req, opts, headers, False), headers, upgrade=WEBSOCKET)
        resp = conn.read_response(False, opts.timeout)
    except BaseException:
        pool.discard(conn)
        raise
    if resp.status != 101:
        strip_response(resp)
        ctx.response = resp            # the body streams; the connection is released at its end
        return FINISHED

    up_stream, up_rest = conn.detach()
    pool.forget(conn)
    strip_response(resp, keep_upgrade=True)
    h1 = ctx.h1
    try:
        h1.write_response(resp, req)
    except OSError:
        up_stream.close()
        ctx.hijack = True
        return FINISHED
    client, rest = h1.detach()
    ctx.hijack = True
    ctx.response = resp                # the 101, for the flow log
    record = getattr(ctx.conn, "record", None)
    for stream in (client, up_stream):
        try:
            stream.settimeout(None)    # the relay's idle timeout alone decides
        except (AttributeError, OSError):
            pass
    relay(client, up_stream, opts.tunnel_idle, record.counters if record is not None else None,
          client_prefix=up_rest, upstream_prefix=rest)
    return FINISHED
