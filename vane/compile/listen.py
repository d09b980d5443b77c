"""Listen addresses (DESIGN.md §3): ``":443"``, ``"127.0.0.1:8080"``, ``"[::1]:8080"``, ``"udp::53"``.

``":port"`` is two listeners, ``0.0.0.0`` and ``[::]`` (v6-only); ``VANE_BIND_IPV4=0`` /
``VANE_BIND_IPV6=0`` drop that family from wildcards, and make an explicit address of the
family an error. Port 0 is rejected.

A listener's own options come from its rules, which must all agree: ``accept_proxy_protocol``
(``listener_proxy_protocol``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from vane.config.errors import ConfigError


class ListenError(ValueError):
    pass


@dataclass(frozen=True, order=True)
class ListenAddr:
    transport: str   # "tcp" | "udp"
    ip: str          # normalised: "0.0.0.0", "::", "127.0.0.1", "::1"
    port: int

    @property
    def family(self) -> int:
        return 6 if ":" in self.ip else 4

    @property
    def is_wildcard(self) -> bool:
        return self.ip in ("0.0.0.0", "::")

    @property
    def hostport(self) -> str:
        return f"[{self.ip}]:{self.port}" if self.family == 6 else f"{self.ip}:{self.port}"

    def __str__(self) -> str:
        return f"{self.transport} {self.hostport}"


def parse_listen(text: str, ipv4: bool = True, ipv6: bool = True) -> list[ListenAddr]:
    """Expand one listen string; raise ListenError with a precise reason."""
    raw = text.strip()
    transport = "tcp"
    for prefix in ("udp:", "tcp:"):
        if raw.startswith(prefix):
            transport, raw = prefix[:-1], raw[len(prefix):]
            break
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0 or not raw[end + 1:].startswith(":"):
            raise ListenError(f"bad listen address {text!r}: expected [ipv6]:port")
        host, port_s = raw[1:end], raw[end + 2:]
        if not host:
            raise ListenError(f"bad listen address {text!r}: empty IPv6 address")
    else:
        host, sep, port_s = raw.rpartition(":")
        if not sep:
            raise ListenError(f"bad listen address {text!r}: expected [ip]:port, e.g. \":443\" or \"127.0.0.1:8080\"")
        if ":" in host:
            raise ListenError(f"bad listen address {text!r}: write IPv6 addresses in brackets, e.g. \"[::1]:8080\"")
    if not port_s.isdigit():
        raise ListenError(f"bad listen address {text!r}: port {port_s!r} is not a number")
    port = int(port_s)
    if port == 0:
        raise ListenError(f"bad listen address {text!r}: port 0 is not allowed")
    if port > 65535:
        raise ListenError(f"bad listen address {text!r}: port {port} is out of range")
    if host in ("", "*"):
        out = []
        if ipv4:
            out.append(ListenAddr(transport, "0.0.0.0", port))
        if ipv6:
            out.append(ListenAddr(transport, "::", port))
        if not out:
            raise ListenError(f"listen {text!r}: both VANE_BIND_IPV4 and VANE_BIND_IPV6 are off")
        return out
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ListenError(f"bad listen address {text!r}: {host!r} is not an IP address") from None
    if addr.version == 4 and not ipv4:
        raise ListenError(f"listen {text!r} is IPv4, but VANE_BIND_IPV4=0")
    if addr.version == 6 and not ipv6:
        raise ListenError(f"listen {text!r} is IPv6, but VANE_BIND_IPV6=0")
    return [ListenAddr(transport, str(addr), port)]


class Trusted:
    """The networks a listener takes PROXY headers from (``accept_proxy_protocol.trusted``)."""

    __slots__ = ("networks",)

    def __init__(self, cidrs: Iterable[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)

    def __contains__(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip.partition("%")[0])
        except ValueError:
            return False
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.networks)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Trusted) and set(self.networks) == set(other.networks)

    def __hash__(self) -> int:
        return hash(frozenset(self.networks))

    def __repr__(self) -> str:
        return f"Trusted({[str(n) for n in self.networks]})"


def listener_proxy_protocol(addr: ListenAddr, rules: list[Any],
                            error: Callable[[Any, str, str], None]) -> Trusted | None:
    """The listener's ``accept_proxy_protocol`` (None: no PROXY header is read). Every rule
    on the listener must say the same; ``error(rule, pointer, message)`` names the two that
    differ. TCP only."""
    first: Any = None
    chosen: Trusted | None = None
    for rule in rules:
        spec = rule.source.rule.get("accept_proxy_protocol")
        trusted = None
        if spec is not None:
            try:
                trusted = Trusted(spec.get("trusted") or ())
            except ValueError as exc:
                error(rule, "/accept_proxy_protocol/trusted", f"not a network: {exc}")
                return None
            if addr.transport != "tcp":
                error(rule, "/accept_proxy_protocol", f"the PROXY protocol is accepted on TCP listeners only, "
                                                      f"not on {addr}")
                return None
        if first is None:
            first, chosen = rule, trusted
        elif trusted != chosen:
            error(rule, "/accept_proxy_protocol",
                  f'rules "{first.name}" ({first.source.file}) and "{rule.name}" ({rule.source.file}) share '
                  f"listener {addr} but not its accept_proxy_protocol: every rule of a listener must have "
                  "the same one")
            return None
    return chosen


def trusted_of(cidrs: Iterable[str] | None) -> Trusted | None:
    """config.json's ``trusted_proxies`` (checked by ``trusted_proxies_errors``); None when empty."""
    return Trusted(cidrs) if cidrs else None


def trusted_proxies_errors(config: dict) -> list[ConfigError]:
    """Every entry of config.json's ``trusted_proxies`` that is not a network or an address."""
    out = []
    for i, cidr in enumerate(config.get("trusted_proxies") or ()):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            out.append(ConfigError("config.json", f"/trusted_proxies/{i}", f"not a network: {exc}"))
    return out


def _hosts(rule: Any) -> set[str]:
    """The host names a rule matches literally (``req.host`` eq / in)."""
    out: set[str] = set()
    for cond in rule.conds:
        if cond.key != "req.host":
            continue
        if cond.op == "eq" and isinstance(cond.right, str):
            out.add(cond.right.lower().rstrip("."))
        elif cond.op == "in" and isinstance(cond.right, list):
            out.update(str(v).lower().rstrip(".") for v in cond.right)
    return out


def mixed_tls_errors(addr: ListenAddr, http: list[Any], error: Callable[[Any, str, str], None]) -> None:
    """On a listener carrying HTTPS and cleartext HTTP, a host named by rules of both kinds is
    an error naming the two: the rule without ``tls`` would never see that host's HTTPS
    requests (it takes only cleartext HTTP on this port)."""
    with_tls: dict[str, Any] = {}
    for rule in http:
        if rule.terminates_tls:
            for host in _hosts(rule):
                with_tls.setdefault(host, rule)
    if not with_tls:
        return
    for rule in http:
        if rule.terminates_tls:
            continue
        for host in sorted(_hosts(rule)):
            other = with_tls.get(host)
            if other is not None:
                error(rule, "/tls", f'rules "{other.name}" ({other.source.file}) and "{rule.name}" '
                                    f'({rule.source.file}) both take host "{host}" on listener {addr}, but '
                                    f'only "{other.name}" has "tls": "{rule.name}" would see that host\'s '
                                    'cleartext HTTP only, never its HTTPS. Give it the same "tls", or move one '
                                    "of them to another listen address")
                break
