"""The client's address behind trusted proxies (``req.client_ip``), as nginx's realip module
with ``real_ip_recursive on`` finds it.

When the connection comes from an address in config.json's ``trusted_proxies``, the
``X-Forwarded-For`` chain (or, without one, the ``for=`` of ``Forwarded``) is walked from the
right: trusted hops are skipped, and the first address that is not trusted is the client.
When every hop is trusted, the leftmost one is. A hop that is not an IP address (``unknown``,
an obfuscated identifier, garbage) ends the walk: the last address before it stands. A
connection from anywhere else is its own client, whatever it sends.
"""

from __future__ import annotations

import ipaddress
from typing import Any

MAX_HOPS = 32   # hops looked at, from the right


def client_ip(peer_ip: str, headers: Any, trusted: Any) -> str:
    """The client's address for a request from ``peer_ip`` with ``headers``."""
    if trusted is None or peer_ip not in trusted:
        return peer_ip
    hops = _hops(headers.get_all("x-forwarded-for"), _xff_hop)
    if not hops:
        hops = _hops(headers.get_all("forwarded"), _forwarded_hop)
    client = peer_ip
    for hop in reversed(hops):
        if hop is None:
            break
        client = hop
        if hop not in trusted:
            break
    return client


def _hops(values: list[str], one: Any) -> list[str | None]:
    if not values:
        return []
    parts = ",".join(values).split(",")
    return [one(p) for p in parts[-MAX_HOPS:]]


def _address(text: str) -> str | None:
    text = text.strip()
    if text.startswith("["):                       # [v6] or [v6]:port
        end = text.find("]")
        text = text[1:end] if end > 0 else ""
    elif text.count(":") == 1:                     # v4:port
        text = text.partition(":")[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _xff_hop(part: str) -> str | None:
    return _address(part)


def _forwarded_hop(element: str) -> str | None:
    for pair in element.split(";"):
        name, _, value = pair.strip().partition("=")
        if name.strip().lower() == "for":
            return _address(value.strip().strip('"'))
    return None
