"""WebSocket through the L7 ``proxy`` (DESIGN.md §6 ``websocket``): HTTP/1.1 upgrade, then a tunnel.

The upgrade request goes upstream on a fresh HTTP/1.1 connection with ``Connection: upgrade``
and the client's ``Upgrade``. A ``101`` is relayed to the client, both connections are
detached from their codecs and the bytes are tunnelled both ways (``vane.net.tunnel.relay``),
bytes already read past either head going first. Any other answer is passed back as a
normal response.
"""

from __future__ import annotations

from typing import Any

from gevent import Timeout

from vane.engine.outcome import FINISHED, Outcome

from ..tunnel import relay
from .errors import UpstreamConnectError, UpstreamTimeout
from .forward import strip_response, upstream_headers
from .forward_options import Options
from .h1common import CRLF, head_is_clean
from .pool import UpstreamPool


def _send(stream: Any, data: bytes, seconds: float) -> None:
    timer = Timeout(seconds)
    timer.start()
    try:
        stream.sendall(data)
    except Timeout as exc:
        if exc is not timer:
            raise
        raise UpstreamTimeout("upgrade request send timeout", True) from None
    except OSError as exc:
        raise UpstreamConnectError(f"upgrade request send failed: {exc}") from None
    finally:
        timer.close()


def is_websocket(req: Any) -> bool:
    """An HTTP/1.1 request asking to upgrade to WebSocket."""
    value = req.headers.getb(b"upgrade")
    return value is not None and b"websocket" in value.lower() and req.version == "1.1"


def proxy_websocket(pool: UpstreamPool, ctx: Any, opts: Options) -> Outcome:
    """Forward the upgrade; on 101 tunnel until either side ends. Raises ``UpstreamError``."""
    req = ctx.request
    headers = upstream_headers(ctx, opts, keep_upgrade=True)
    headers.items_.append((b"connection", b"upgrade"))
    up = opts.upstream
    target = up.target(req.path)
    if req.query:
        target += "?" + req.query
    parts = [req.method.encode("latin-1"), b" ", target.encode("latin-1"), b" HTTP/1.1\r\n"]
    for k, v in headers.items_:
        parts += (k, b": ", v, CRLF)
    parts.append(CRLF)
    head = b"".join(parts)
    if " " in target or not head_is_clean(head, len(headers.items_) + 2):
        raise ValueError("CR, LF or space in the upgrade request")

    ep = pool.endpoint(opts.h1_spec)
    conn = pool.acquire(ep, opts.connect_timeout, fresh=True)
    try:
        _send(conn.stream, head, opts.timeout)
        conn.bytes_sent = len(head)
        conn.idle_timeout = opts.read_timeout
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
