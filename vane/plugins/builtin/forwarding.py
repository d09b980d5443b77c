"""What ``fetch`` and ``proxy`` share above the upstream I/O: the client's address as the pool
and the forwarding fields see it, and reporting an upstream failure once — in the flow log,
the metrics and one rate-limited warning naming rule, upstream and request."""

from __future__ import annotations

import logging
from typing import Any

from vane.net.http.errors import (
    HttpError,
    UpstreamBusy,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from vane.net.upstream.forward import client_ip
from vane.net.upstream.options import Options
from vane.observe.logging import RateLimitedLogger

__all__ = ["client_failed", "failed", "failed_midway", "peer_ip"]

_KINDS = {UpstreamTimeout: "timeout", UpstreamConnectError: "connect", UpstreamProtocolError: "protocol",
          UpstreamBusy: "busy"}
upstream_log = RateLimitedLogger(logging.getLogger("vane.upstream"))


def peer_ip(ctx: Any) -> str:
    """The request's client address ("" when the context has no connection: unit tests)."""
    conn = ctx.conn
    return client_ip(conn.peer if conn is not None else None)


def failed(ctx: Any, opts: Options, exc: UpstreamError, what: str = "upstream") -> int:
    """Report an upstream failure; returns the status to answer (502/503/504)."""
    status = exc.status
    kind = _KINDS.get(type(exc), "error")
    ctx.trajectory.note_error(f"{what} {opts.label}: {exc} -> {status}")
    upstream_log.log((ctx.rule, opts.label, kind), logging.WARNING, "%s %s failed (%s) for rule %s, request %s: %s",
                     what, opts.label, kind, ctx.rule, ctx.request_id, exc,
                     extra={"conn": ctx.conn_id, "rule": ctx.rule, "upstream": opts.label, "status": status})
    services = ctx.services
    if services is not None:
        services.metrics.upstream_error(opts.label, kind)
    return status


def failed_midway(exc: UpstreamError, ctx: Any, opts: Options) -> None:
    """Report an upstream that broke off a response the client is already receiving."""
    failed(ctx, opts, exc, "upstream response from")


def client_failed(ctx: Any, exc: HttpError) -> None:
    """The client's side broke while its body was being forwarded (400/408/413)."""
    ctx.fail_status = exc.status
    ctx.trajectory.note_error(f"client: {exc}")
