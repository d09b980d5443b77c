"""``proxy`` at L4 (DESIGN.md §6): forward the byte stream (or UDP datagrams) to a target.

Targets are ``host:port`` (a list balances: round_robin, random, least_conn, hash on
``hash_key``); a target that fails to connect is marked down for a while and the next one is
tried. Optionally a PROXY protocol v1/v2 header goes first. The tunnel is ``vane.net.tunnel``
(splice zero-copy between plain sockets) with an idle timeout; half-close is propagated.
"""

from __future__ import annotations

import logging
import socket
from collections import OrderedDict

from vane.engine.outcome import FINISHED
from vane.engine.plugin import LinkEnv, Terminator
from vane.net.balance import Balancer
from vane.net.dial import ip_family, split_target, tcp_connect, tcp_connect_nonblocking, udp_connect
from vane.net.proxy_protocol import header_v1, header_v2
from vane.net.sockets import reset
from vane.net.tunnel import relay
from vane.net.udp import relay_session

log = logging.getLogger("vane.proxy")

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_IDLE_TIMEOUT = 300.0
MAX_BALANCERS = 256
MAX_ADDRESSES = 1024

_addresses: dict[str, tuple[str, int, int]] = {}  # target -> (host, port, family); 0 = a name


def address(target: str) -> tuple[str, int, int]:
    """``host:port`` parsed once: (host, port, address family or 0 for a name to resolve)."""
    addr = _addresses.get(target)
    if addr is None:
        host, port = split_target(target)
        addr = (host, port, ip_family(host))
        if len(_addresses) < MAX_ADDRESSES:  # targets may come from templates: bound the memo
            _addresses[target] = addr
    return addr


def connect(target: str, timeout: float, proto: str = "tcp") -> socket.socket:
    host, port, family = address(target)
    if proto == "udp":
        return udp_connect(host, port)
    if family:
        return tcp_connect_nonblocking(host, port, timeout, family)
    sock = tcp_connect(host, port, timeout, 0)
    sock.settimeout(None)
    return sock


class L4Proxy(Terminator):
    def __init__(self, node, env: LinkEnv) -> None:
        super().__init__(node, env)
        self._balancers: OrderedDict[tuple, Balancer] = OrderedDict()

    def balancer(self, targets: tuple[str, ...], strategy: str) -> Balancer:
        key = (targets, strategy)
        bal = self._balancers.get(key)
        if bal is None:
            bal = self._balancers[key] = Balancer(strategy, targets)
            if len(self._balancers) > MAX_BALANCERS:  # targets come from templates: bound them
                self._balancers.popitem(last=False)
        return bal

    def terminate(self, ctx, args):
        target = args["target"]
        targets = tuple(target) if isinstance(target, list) else (target,)
        bal = self.balancer(targets, args.get("balance", "round_robin"))
        connect_timeout = float(args.get("connect_timeout") or DEFAULT_CONNECT_TIMEOUT)
        idle = float(args.get("idle_timeout") or DEFAULT_IDLE_TIMEOUT)
        proto = "udp" if ctx.udp is not None else "tcp"
        upstream = chosen = None
        errors = []
        for candidate in bal.order(args.get("hash_key") or ctx.kv.get("conn.ip")):
            try:
                upstream = connect(candidate, connect_timeout, proto)
                chosen = candidate
                bal.mark_ok(candidate)
                break
            except (OSError, ValueError) as exc:
                bal.mark_failed(candidate)
                errors.append(f"{candidate}: {exc}")
        if upstream is None:
            ctx.trajectory.note_error("no target reachable: " + "; ".join(errors))
            log.warning("no target reachable: %s", "; ".join(errors), extra=ctx.log_extra())
            if proto == "tcp":
                reset(ctx.sock)
            return FINISHED
        ctx.kv.set("plugin.proxy.target", chosen)
        if ctx.conn is not None:
            ctx.conn.upstream = chosen
        bal.acquire(chosen)
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
            relay(ctx.stream, upstream, idle, counters, upstream_prefix=prefix)
        finally:
            bal.release(chosen)
        return FINISHED
