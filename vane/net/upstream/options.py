"""A ``fetch`` / ``proxy`` node's inputs, compiled once (DESIGN.md §6).

Static input is compiled when the graph is linked; templated input once per distinct resolved
value, in a bounded cache, so the request path never re-parses an upstream address. Bad
values (address, version, timeouts, header values) fail at link time when static.
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


class Options:
    """One node's forwarding inputs, compiled."""

    __slots__ = ("upstream", "spec", "h1_spec", "host", "timeout", "read_timeout", "tunnel_idle",
                 "connect_timeout", "retries", "extra", "extra_names", "forwarded", "trusted", "websocket",
                 "label")

    def __init__(self, args: dict, config_dir: str | None = None, forwarded_default: bool = False) -> None:
        self.upstream: Upstream = parse_upstream(args["upstream"])
        version = args.get("version") or "auto"
        if version not in ("auto", "h1", "h2"):
            raise ValueError(f"version: expected auto, h1 or h2, got {version!r}")
        ca_file = args.get("ca_file") or None
        if ca_file and config_dir and not os.path.isabs(ca_file):
            ca_file = os.path.join(config_dir, ca_file)
        self.spec = EndpointSpec(self.upstream, version, _flag(args.get("verify"), True), ca_file,
                                 args.get("sni") or None)
        self.label = self.spec.label
        # upgrades (WebSocket) need an HTTP/1.1 connection whatever ALPN would pick
        self.h1_spec = self.spec if version == "h1" or not self.upstream.tls else EndpointSpec(
            self.upstream, "h1", self.spec.verify, ca_file, self.spec.sni)
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




class OptionsSource:
    """Compiled options for a node: fixed when its input is static, else cached per value."""

    __slots__ = ("static", "config_dir", "forwarded_default", "_cache")

    def __init__(self, node: Any, config_dir: str | None, forwarded_default: bool = False) -> None:
        self.config_dir = config_dir
        self.forwarded_default = forwarded_default
        self._cache: dict[str, Options] = {}
        self.static = Options(node.input.raw, config_dir, forwarded_default) if node.input.is_static else None
        if self.static is None and "{{" not in str(node.input.raw.get("upstream", "")):
            # templated elsewhere: still fail at link time on a bad upstream address
            parse_upstream(node.input.raw["upstream"])

    def get(self, args: dict) -> Options:
        static = self.static
        if static is not None:
            return static
        key = repr(sorted(args.items()))
        opts = self._cache.get(key)
        if opts is None:
            opts = Options(args, self.config_dir, self.forwarded_default)
            if len(self._cache) >= _OPTIONS_CACHE:
                self._cache.clear()
            self._cache[key] = opts
        return opts


