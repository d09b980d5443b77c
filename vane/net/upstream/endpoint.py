"""What the upstream pool keeps per backend (DESIGN.md §6 ``fetch`` / ``proxy``).

``EndpointSpec``: the identity of an endpoint (address, HTTP version, TLS options), built once
per node. ``Endpoint``: its pooled state (idle HTTP/1.1 connections, leases, waiters, shared
HTTP/2 connections, the protocol ALPN chose). ``PooledH1``: an HTTP/1.1 connection that knows
its endpoint and can probe itself for staleness.
"""

from __future__ import annotations

import socket
import time
from collections import deque
from typing import Any

from gevent.event import Event

from vane.net.dial import ip_family
from vane.net.h1.client import H1ClientConnection
from vane.net.plain import PlainStream
from vane.net.upstream.url import Upstream

_monotonic = time.monotonic


class EndpointSpec:
    """What identifies an endpoint; built once per plugin node (or per templated value)."""

    __slots__ = ("upstream", "version", "verify", "ca_file", "sni", "key", "label", "family")

    def __init__(self, upstream: Upstream, version: str = "auto", verify: bool = True,
                 ca_file: str | None = None, sni: str | None = None) -> None:
        if upstream.scheme != "https":
            verify, ca_file, sni = True, None, None
        self.upstream = upstream
        self.family = ip_family(upstream.host) if upstream.scheme != "unix" else socket.AF_UNIX
        self.version = version
        self.verify = bool(verify)
        self.ca_file = ca_file or None
        self.sni = sni or None
        base = upstream.name[: len(upstream.name) - len(upstream.base)] if upstream.base else upstream.name
        extra = []
        if version != "auto":
            extra.append(version)
        if not self.verify:
            extra.append("verify=off")
        if self.ca_file:
            extra.append(f"ca={self.ca_file}")
        if self.sni:
            extra.append(f"sni={self.sni}")
        self.label = base + (f" ({', '.join(extra)})" if extra else "")
        self.key = self.label


class PooledH1(H1ClientConnection):
    """An HTTP/1.1 upstream connection that knows its endpoint and its pool: when the body of
    a leased exchange ends (read whole or dropped) the lease goes back to ``release``."""

    def __init__(self, stream: Any, endpoint: "Endpoint", release: Any) -> None:
        super().__init__(stream)
        self.endpoint = endpoint
        self.release = release              # the pool's: keep the connection or close it
        self.leased = False
        self.reused = False
        self.idle_since = 0.0
        self.client: str | None = None      # whose share of the endpoint this lease is
        self.backend: Any = None            # the group backend this lease counts for (its requests in flight)

    def _body_end(self, body: Any, complete: bool) -> None:
        super()._body_end(body, complete)
        if self.leased:
            self.release(self)

    def alive(self) -> bool:
        """Cheap staleness probe of a plain socket (one non-blocking MSG_PEEK): an idle
        keep-alive connection has nothing to read; EOF, a reset or stray bytes mean it is
        unusable. TLS streams are not probed (post-handshake records may be pending)."""
        stream = self.stream
        if stream.__class__ is not PlainStream:
            return True
        try:
            stream.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False


class Endpoint:
    __slots__ = ("spec", "idle", "active", "waiters", "h2", "connecting", "proto", "last_used",
                 "transient", "connects", "reuses", "label", "by_client", "share_waiters")

    def __init__(self, spec: EndpointSpec, transient: bool = False) -> None:
        self.spec = spec
        self.label = spec.label
        self.idle: list[PooledH1] = []
        self.active = 0                     # HTTP/1.1 connections leased or being opened
        self.waiters: deque[Event] = deque()
        # leases per client IP: only clients holding one are present, so bounded by the leases
        self.by_client: dict[str, int] = {}
        self.share_waiters: deque[tuple[str, Event]] = deque()
        self.h2: list[Any] = []             # H2ClientConnection
        self.connecting: Event | None = None
        # "h2" once a connection negotiated it (or version h2), "h1" once one did not
        self.proto: str | None = "h2" if spec.version == "h2" else ("h1" if spec.version == "h1" or
                                                                   spec.upstream.scheme != "https" else None)
        self.last_used = _monotonic()
        self.transient = transient
        self.connects = 0
        self.reuses = 0

    def empty(self) -> bool:
        return not (self.idle or self.active or self.waiters or self.h2 or self.connecting
                    or self.by_client or self.share_waiters)
