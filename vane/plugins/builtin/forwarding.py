"""What ``fetch`` and ``proxy`` share above the upstream I/O: the node's options with its
upstream group linked, the hash key of a request, the client's address as the pool and the
forwarding fields see it, and reporting an upstream failure once — in the flow log, the
metrics and one rate-limited warning naming rule, upstream and request."""

from __future__ import annotations

import logging
from typing import Any

from vane.engine.plugin import LinkEnv
from vane.engine.template import TemplateError, render
from vane.net.http.errors import (
    HttpError,
    UpstreamBusy,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from vane.net.upstream.forward import client_ip
from vane.net.upstream.group import NoBackend
from vane.net.upstream.options import Options, OptionsSource
from vane.net.upstream.pool import PoolTimeout
from vane.net.upstream.registry import link_group
from vane.observe.logging import RateLimitedLogger

__all__ = ["client_failed", "failed", "failed_midway", "hash_key", "node_options", "peer_ip", "retried"]

_KINDS = {UpstreamTimeout: "timeout", PoolTimeout: "timeout", UpstreamConnectError: "connect",
          UpstreamProtocolError: "protocol", UpstreamBusy: "busy", NoBackend: "unavailable"}
upstream_log = RateLimitedLogger(logging.getLogger("vane.upstream"))


def node_options(node: Any, env: LinkEnv, forwarded_default: bool) -> OptionsSource:
    """The node's compiled options, its upstream group linked; a templated ``upstream`` may
    name any config.json group of HTTP backends, so those are linked too."""
    table = getattr(env.graph, "upstreams", None)
    group = table.of_node(node.id) if table is not None else None
    if group is not None:
        link_group(group, env.services, env.config_dir)
    lookup = None
    upstream = node.input.raw.get("upstream")
    if table is not None and isinstance(upstream, str) and "{{" in upstream:
        for defn in table.groups.values():
            if not defn.inline and defn.layer == "l7":
                link_group(defn, env.services, env.config_dir)
        lookup = _Named(table)
    return OptionsSource(node, env.config_dir, forwarded_default, group, lookup)


class _Named:
    """A resolved ``upstream`` value -> the config.json group it names (or None)."""

    __slots__ = ("table",)

    def __init__(self, table: Any) -> None:
        self.table = table

    def __call__(self, name: str) -> Any:
        return self.table.named(name, "l7")


def hash_key(ctx: Any, opts: Options, limit: int) -> str | None:
    """The request's ``hash_key`` for ``opts``' group (None without one; "" when it resolves to
    nothing or to more than ``limit``: the request is balanced like any other)."""
    parts = opts.group.hash_parts
    if parts is None:
        return None
    try:
        return render(parts, ctx.kv, limit, None)
    except TemplateError:
        return ""


def retried(ctx: Any, exc: UpstreamError, backend: Any) -> None:
    """A backend failed and the request goes to another one: the flow log and the metrics."""
    kind = _KINDS.get(type(exc), "error")
    ctx.trajectory.note_error(f"upstream {backend.group.name} backend {backend.label}: {exc} ({kind}); "
                              "retrying on another backend")
    services = ctx.services
    if services is not None:
        services.metrics.upstream_error(backend.label, kind)


def peer_ip(ctx: Any) -> str:
    """The request's client address ("" when the context has no connection: unit tests)."""
    conn = ctx.conn
    return client_ip(conn.peer if conn is not None else None)


def failed(ctx: Any, opts: Options, exc: UpstreamError, what: str = "upstream") -> int:
    """Report an upstream failure; returns the status to answer (502/503/504)."""
    status = exc.status
    kind = _KINDS.get(type(exc), "error")
    backend = getattr(exc, "backend", None)
    label = backend or opts.label
    shown = f"{opts.label} backend {backend}" if backend else opts.label
    ctx.trajectory.note_error(f"{what} {shown}: {exc} -> {status}")
    upstream_log.log((ctx.rule, label, kind), logging.WARNING, "%s %s failed (%s) for rule %s, request %s: %s",
                     what, shown, kind, ctx.rule, ctx.request_id, exc,
                     extra={"conn": ctx.conn_id, "rule": ctx.rule, "upstream": label, "status": status})
    services = ctx.services
    if services is not None:
        services.metrics.upstream_error(label, kind)
    return status


def failed_midway(exc: UpstreamError, ctx: Any, opts: Options) -> None:
    """Report an upstream that broke off a response the client is already receiving."""
    failed(ctx, opts, exc, "upstream response from")


def client_failed(ctx: Any, exc: HttpError) -> None:
    """The client's side broke while its body was being forwarded (400/408/413)."""
    ctx.fail_status = exc.status
    ctx.trajectory.note_error(f"client: {exc}")
