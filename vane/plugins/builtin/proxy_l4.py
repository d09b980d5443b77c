"""``proxy`` at L4 (DESIGN.md §6): forward the byte stream (or UDP datagrams) to a target.

``target`` is one ``host:port``, an upstream group (a list of backends, or the name of a
config.json group of ``host:port`` backends) balanced by its ``balance`` (round_robin,
random, least_conn, hash on ``hash_key``, by default the client address). A backend that
fails to connect counts for its passive health and the next one is tried; with no backend
available the connection is reset at once. Groups may have TCP connect health checks.
Optionally a PROXY protocol v1/v2 header goes first. The tunnel is ``vane.net.tunnel``
(splice zero-copy between plain sockets) with an idle timeout; half-close is propagated.
"""

from __future__ import annotations

import logging
import socket
from collections import OrderedDict
from typing import Any

from vane.engine.outcome import FINISHED
from vane.engine.plugin import LinkEnv, Terminator
from vane.engine.template import TemplateError, render
from vane.net.dial import ip_family, split_target, tcp_connect_raw, udp_connect
from vane.net.proxy_protocol import header_v1, header_v2
from vane.net.tunnel import relay
from vane.net.udp import relay_session
from vane.net.upstream.group import Group, GroupError, anonymous
from vane.net.upstream.registry import link_group

log = logging.getLogger("vane.proxy")

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_IDLE_TIMEOUT = 300.0
MAX_ANONYMOUS = 256             # groups of templated target lists: the values come from the flow


def connect(host: str, port: int, timeout: float, proto: str = "tcp", family: int | None = None) -> socket.socket:
    """A connection to ``host:port``; ``family`` (when known) is ``ip_family(host)``."""
    if proto == "udp":
        return udp_connect(host, port)
    return tcp_connect_raw(host, port, timeout, family)     # the kernel socket: the relay splices it


class L4Proxy(Terminator):
    def __init__(self, node, env: LinkEnv) -> None:
        super().__init__(node, env)
        table = getattr(env.graph, "upstreams", None)
        self.defn = table.of_node(node.id) if table is not None else None
        if self.defn is not None:
            link_group(self.defn, env.services, env.config_dir)
        self.table = None
        target = node.input.raw.get("target")
        if table is not None and isinstance(target, str) and "{{" in target:
            self.table = table          # a templated target may name a config.json group
            for defn in table.groups.values():
                if not defn.inline and defn.layer == "l4":
                    link_group(defn, env.services, env.config_dir)
        self.key_limit = getattr(env.settings, "max_template_result_size", 65536)
        # a literal host:port, parsed once: (target, host, port, address family)
        self._fixed: tuple[str, str, int, int] | None = None
        if isinstance(target, str) and "{{" not in target and ":" in target:
            try:
                host, port = split_target(target)
            except ValueError:
                pass                    # the walk reports it, as for a templated target
            else:
                self._fixed = (target, host, port, ip_family(host))
        self._anonymous: OrderedDict[tuple, Group] = OrderedDict()

    def _route(self, ctx: Any, args: dict) -> tuple[Group | None, str | None, str | None]:
        """(group, its hash key, None) or (None, None, the one ``host:port`` target)."""
        defn = self.defn
        if defn is None:
            target = args["target"]
            if not isinstance(target, str):
                return (self._templated(target, args.get("balance") or "round_robin"),
                        args.get("hash_key") or ctx.kv.get("conn.ip"), None)
            defn = self.table.named(target, "l4") if self.table is not None and ":" not in target else None
            if defn is None:
                return None, None, target
        parts = defn.hash_parts
        key = None
        if parts is not None:
            try:
                key = render(parts, ctx.kv, self.key_limit, None)
            except TemplateError:
                key = ""
        return defn.runtime, key, None

    def _templated(self, targets: list, balance: str) -> Group:
        key = (tuple((t["address"], t.get("weight", 1), t.get("backup", False)) if isinstance(t, dict) else t
                     for t in targets), balance)
        group = self._anonymous.get(key)
        if group is None:
            group = self._anonymous[key] = anonymous(targets, balance)
            if len(self._anonymous) > MAX_ANONYMOUS:
                self._anonymous.popitem(last=False)
        return group

    def terminate(self, ctx, args):
        connect_timeout = float(args.get("connect_timeout") or DEFAULT_CONNECT_TIMEOUT)
        idle = float(args.get("idle_timeout") or DEFAULT_IDLE_TIMEOUT)
        proto = "udp" if ctx.udp is not None else "tcp"
        errors: list[str] = []
        group = key = single = None
        try:
            group, key, single = self._route(ctx, args)
        except GroupError as exc:       # a templated target list that resolved to a bad address
            errors.append(str(exc))
        upstream = chosen = backend = None
        if single is not None:
            try:
                fixed = self._fixed
                if fixed is not None and fixed[0] == single:
                    upstream = connect(fixed[1], fixed[2], connect_timeout, proto, fixed[3])
                else:
                    host, port = split_target(single)
                    upstream = connect(host, port, connect_timeout, proto)
                chosen = single
            except (OSError, ValueError) as exc:
                errors.append(f"{single}: {exc}")
        elif group is not None:
            backend = group.choose(key)
            if backend is None:
                errors.append(f"no backend of upstream group {group.name} is available")
            tried: list = []
            while backend is not None:
                try:
                    upstream = connect(backend.host, backend.port, connect_timeout, proto)
                    chosen = backend.label
                    group.succeeded(backend)
                    break
                except (OSError, ValueError) as exc:
                    group.failed(backend, "timeout" if isinstance(exc, (socket.timeout, TimeoutError)) else "connect")
                    errors.append(f"{backend.label}: {exc}")
                    tried.append(backend)
                    backend = group.choose_other(key, tried)
        if upstream is None:
            ctx.trajectory.note_error("no target reachable: " + "; ".join(errors))
            log.warning("no target reachable: %s", "; ".join(errors), extra=ctx.log_extra())
            if proto == "tcp":
                ctx.reset_client()
            return FINISHED
        ctx.kv.set("plugin.proxy.target", chosen)
        if ctx.conn is not None:
            ctx.conn.upstream = chosen
        if backend is not None:
            backend.begin()
        try:
            prefix = b""
            pp = args.get("proxy_protocol")
            if pp:
                src, dst = ctx.peer[:2], ctx.local[:2]
                prefix = header_v1(src, dst) if pp == "v1" else header_v2(src, dst, proto)
            if proto == "udp":      # v2 only (the compiler refuses v1): one header per datagram
                relay_session(ctx.udp, upstream, idle, prefix)
                return FINISHED
            counters = ctx.conn.counters if ctx.conn is not None else None
            relay(ctx.relay_stream, upstream, idle, counters, upstream_prefix=prefix)
        finally:
            if backend is not None:
                backend.end()
        return FINISHED
