"""A ``fetch`` / ``proxy`` node's inputs, compiled once (DESIGN.md §6).

Static input is compiled when the graph is linked; templated input once per distinct resolved
value, in a bounded cache, so the request path never re-parses an upstream address. Bad
values (address, version, timeouts, header values) fail at link time when static. An input
whose only template is the group's ``hash_key`` is static: the key is resolved per request
by the plugin, never through this cache.

``upstream`` is one address (``target``), or an upstream group (``group``, the compiled
definition whose ``runtime`` is the live group) with one ``Target`` per backend, aligned with
the group's backends.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from vane.config.settings import parse_bool
from vane.net.http.message import field_value
from vane.net.upstream.pool import EndpointSpec
from vane.net.upstream.url import Upstream, parse_upstream

_OPTIONS_CACHE = 256

DEFAULT_TIMEOUT = 60.0         # response head
DEFAULT_READ_TIMEOUT = 60.0    # body idle, both ways
DEFAULT_RETRIES = 1
DEFAULT_TUNNEL_IDLE = 3600.0   # WebSocket tunnels


def _num(value: Any, name: str, default: float | None) -> float | None:
    if value is None or value == "":
        return default
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {value!r}") from None
    if out <= 0:
        raise ValueError(f"{name}: must be > 0")
    return out


def _flag(value: Any, default: bool) -> bool:
    """A boolean input, possibly templated ("true", "1", ...); empty means ``default``."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    return parse_bool(str(value)) is True


class Target:
    """One backend as a node reaches it: its address and the endpoint identity (HTTP version,
    TLS options) the pool keys its connections by."""

    __slots__ = ("upstream", "spec", "h1_spec", "label")

    def __init__(self, upstream: Upstream, version: str, verify: bool, ca_file: str | None,
                 sni: str | None) -> None:
        self.upstream = upstream
        self.spec = EndpointSpec(upstream, version, verify, ca_file, sni)
        self.label = self.spec.label
        # upgrades (WebSocket) need an HTTP/1.1 connection whatever ALPN would pick
        self.h1_spec = self.spec if version == "h1" or not upstream.tls else EndpointSpec(
            upstream, "h1", self.spec.verify, ca_file, self.spec.sni)


class Options:
    """One node's forwarding inputs, compiled."""

    __slots__ = ("upstream", "spec", "h1_spec", "host", "timeout", "read_timeout", "tunnel_idle",
                 "connect_timeout", "retries", "extra", "extra_names", "forwarded", "trusted", "websocket",
                 "label", "target", "group", "targets")

    def __init__(self, args: dict, config_dir: str | None = None, forwarded_default: bool = False,
                 group: Any = None) -> None:
        version = args.get("version") or "auto"
        if version not in ("auto", "h1", "h2"):
            raise ValueError(f"version: expected auto, h1 or h2, got {version!r}")
        ca_file = args.get("ca_file") or None
        if ca_file and config_dir and not os.path.isabs(ca_file):
            ca_file = os.path.join(config_dir, ca_file)
        verify = _flag(args.get("verify"), True)
        sni = args.get("sni") or None
        self.group = group              # the upstream group's definition (``.runtime``: the live group)
        if group is None:
            self.target: Target | None = Target(parse_upstream(args["upstream"]), version, verify, ca_file, sni)
            self.targets: tuple[Target, ...] = (self.target,)
            self.upstream: Upstream | None = self.target.upstream
            self.spec: EndpointSpec | None = self.target.spec
            self.h1_spec: EndpointSpec | None = self.target.h1_spec
            self.label = self.target.label
        else:
            self.targets = tuple(Target(b.upstream, version, verify, ca_file, sni) for b in group.runtime.backends)
            self.target = self.upstream = self.spec = self.h1_spec = None
            self.label = group.name
        host = args.get("host")
        self.host: bytes | None = field_value(host).encode("latin-1") if host else None
        self.timeout = _num(args.get("timeout"), "timeout", DEFAULT_TIMEOUT)
        self.read_timeout = _num(args.get("read_timeout"), "read_timeout", DEFAULT_READ_TIMEOUT)
        # an upgraded stream idles legitimately for long: read_timeout only when set explicitly
        self.tunnel_idle = _num(args.get("read_timeout"), "read_timeout", DEFAULT_TUNNEL_IDLE)
        self.connect_timeout = _num(args.get("connect_timeout"), "connect_timeout", None)
        retries = args.get("retries")
        self.retries = DEFAULT_RETRIES if retries is None else max(0, min(int(retries), 5))
        self.extra = [(k.lower().encode("latin-1"), field_value(v).encode("latin-1"))
                      for k, v in (args.get("headers") or {}).items()]
        self.extra_names = frozenset(k for k, _ in self.extra)
        self.forwarded = _flag(args.get("forwarded"), forwarded_default)
        self.trusted = [ipaddress.ip_network(c, strict=False) for c in args.get("trusted_proxies") or ()]
        self.websocket = _flag(args.get("websocket"), True)




def _static(node: Any) -> bool:
    """True when the node's input has no template but in ``hash_key`` (resolved per request)."""
    cinput = node.input
    if cinput.is_static:
        return True
    templates = getattr(cinput, "templates", None)
    return templates is not None and all(ptr == "/hash_key" for ptr, _ in templates())


class OptionsSource:
    """Compiled options for a node: fixed when its input is static, else cached per value.

    ``group``: the node's upstream group (its definition, linked). ``groups``: a lookup
    ``(name) -> definition or None`` for a templated ``upstream`` naming a group.
    """

    __slots__ = ("static", "config_dir", "forwarded_default", "groups", "_cache")

    def __init__(self, node: Any, config_dir: str | None, forwarded_default: bool = False,
                 group: Any = None, groups: Any = None) -> None:
        self.config_dir = config_dir
        self.forwarded_default = forwarded_default
        self.groups = groups
        self._cache: dict[str, Options] = {}
        raw = node.input.raw
        self.static = Options(raw, config_dir, forwarded_default, group) if _static(node) else None
        upstream = raw.get("upstream", "")
        if self.static is None and group is None and isinstance(upstream, str) and "{{" not in upstream:
            # templated elsewhere: still fail at link time on a bad upstream address
            parse_upstream(upstream)

    def get(self, args: dict) -> Options:
        static = self.static
        if static is not None:
            return static
        key = repr(sorted(args.items()))
        opts = self._cache.get(key)
        if opts is None:
            upstream = args.get("upstream")
            group = self.groups(upstream) if self.groups is not None and isinstance(upstream, str) else None
            opts = Options(args, self.config_dir, self.forwarded_default, group)
            if len(self._cache) >= _OPTIONS_CACHE:
                self._cache.clear()
            self._cache[key] = opts
        return opts


