"""Listen addresses (DESIGN.md §3): ``":443"``, ``"127.0.0.1:8080"``, ``"[::1]:8080"``, ``"udp::53"``.

``":port"`` is two listeners, ``0.0.0.0`` and ``[::]`` (v6-only); ``VANE_BIND_IPV4=0`` /
``VANE_BIND_IPV6=0`` drop that family from wildcards, and make an explicit address of the
family an error. Port 0 is rejected.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


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
