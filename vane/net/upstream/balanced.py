"""Forwarding one request to a backend of an upstream group (``fetch`` / ``proxy``).

``exchange_balanced`` picks the backend, sends through ``exchange`` (or asks for a WebSocket
with ``open_websocket``), counts a failure for the backend's passive health and, when that is
safe, sends the request to another backend, up to ``retries`` times:

- a request that never reached the wire (a refused or timed-out connect, no free slot), any
  method: the backend never saw it;
- an idempotent request (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) whose body is empty or
  buffered, of which no response byte arrived, unless the response timed out (the backend
  may still be working on it).

A request that was sent and is not idempotent, or whose body already streamed, is never sent
a second time. When no backend can take the request, ``NoBackend`` (503, ``retry_after``) is
raised at once, without trying any.
"""

from __future__ import annotations

from typing import Any, Callable

from vane.net.http.errors import UpstreamError, UpstreamTimeout
from vane.net.http.message import Headers, Request, Response
from vane.net.upstream.forward import IDEMPOTENT, exchange
from vane.net.upstream.group import NoBackend, passive_kind
from vane.net.upstream.options import Options, Target
from vane.net.upstream.pool import UpstreamPool
from vane.net.upstream.websocket import open_websocket

__all__ = ["exchange_balanced"]


def exchange_balanced(pool: UpstreamPool, req: Request, opts: Options, headers: Headers, client: str | None,
                      key: str | None, report: Callable[..., None] | None = None, report_arg: Any = None,
                      websocket: bool = False) -> tuple[Response, Any, Any]:
    """(response, connection — with ``websocket``: the tunnel or None —, backend).

    ``key``: the resolved ``hash_key``. ``report(report_arg, exc, backend)`` hears of each
    failure that is retried elsewhere. The ``UpstreamError`` raised when retries run out names
    its backend in ``exc.backend``.
    """
    group = opts.group.runtime
    backend = group.choose(key)
    if backend is None:
        raise NoBackend(group)
    body = req.body
    safe = req.method in IDEMPOTENT and (body.length == 0 or body.is_buffered)
    no_host = not req.authority and opts.host is None
    tries = opts.retries
    tried: list | None = None
    while True:
        target = opts.targets[backend.index]
        sent = _with_host(headers, target) if no_host else headers
        try:
            if websocket:
                resp, conn = open_websocket(pool, req, opts, sent, target)
            else:
                resp, conn = exchange(pool, req, opts, sent, client, target, backend, 0)
        except UpstreamError as exc:
            group.failed(backend, passive_kind(exc))
            exc.backend = backend.label
            if tries <= 0 or exc.response_started or exc.status == 503 or (
                    exc.request_sent and (not safe or isinstance(exc, UpstreamTimeout))):
                raise
            tried = [backend] if tried is None else [*tried, backend]
            nxt = group.choose_other(key, tried)
            if nxt is None:
                raise
            if report is not None:
                report(report_arg, exc, backend)
            tries -= 1
            backend = nxt
            continue
        group.answered(backend, resp.status)
        return resp, conn, backend


def _with_host(headers: Headers, target: Target) -> Headers:
    """``headers`` naming ``target`` in Host (for a client that sent none: HTTP/1.0)."""
    items = [kv for kv in headers.items_ if kv[0] != b"host"]
    items.append((b"host", target.upstream.authority.encode("latin-1")))
    return Headers(items)
