"""The security floor's accept-time limits (DESIGN.md §8): connections in total and per IP,
TLS handshakes per IP per second. Breaches are counted and logged once per (limit, ip) per
second. The state is daemon-scoped (it survives reloads) and bounded.

One process counts in its own connection table; a worker counts in the daemon's shared
tables (``share``), so that the limits hold for all workers together."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any

from vane.flow.connection import ConnTable
from vane.observe.logging import log_once_per_second

MAX_TRACKED_IPS = 65536


class Floor:
    """Owns the accept-time decisions and the breach counters of one process."""

    def __init__(self, settings, conns: ConnTable, metrics=None, clock=time.monotonic) -> None:
        self.settings = settings
        self.conns = conns
        self.metrics = metrics
        self.clock = clock
        self.hits: dict[str, int] = {}
        self._handshakes: OrderedDict[str, list[float]] = OrderedDict()  # ip -> [window start, count]
        self.shared: Any = None     # SharedLimits, in a worker
        self.worker = 0

    def share(self, limits: Any, worker: int) -> None:
        """Count in ``limits`` (the daemon's shared tables) as worker number ``worker``."""
        self.shared = limits
        self.worker = worker

    def crowded(self) -> bool:
        """A worker: True while it holds clearly more open connections than the least loaded
        worker (its listeners then leave the next connection to the others for a moment)."""
        active = self.shared.conns.active()
        least = min(active)
        return active[self.worker] > least + max(2, least >> 3)

    def hit(self, limit: str, ip: str, message: str | None = None) -> None:
        """Count a refusal by ``limit`` and log it once per (limit, ip) per second; ``message``
        (with one ``%s`` for the ip) replaces the default line."""
        self.hits[limit] = self.hits.get(limit, 0) + 1
        if self.metrics is not None:
            self.metrics.floor_hit(limit)
        if message is None:
            log_once_per_second((limit, ip), logging.WARNING, "security floor: %s reached for %s", limit, ip,
                                extra={"limit": limit, "ip": ip})
        else:
            log_once_per_second((limit, ip), logging.WARNING, message, ip, extra={"limit": limit, "ip": ip})

    def admit(self, ip: str) -> bool:
        """May a new connection from ``ip`` be accepted? Every admitted connection is
        ``release``d when it ends."""
        if self.shared is not None:
            s = self.settings
            limit = self.shared.conns.acquire(self.worker, ip, s.sec_max_connections, s.sec_max_connections_per_ip)
            if limit is None:
                return True
            self.hit(limit, ip)
            return False
        if len(self.conns) >= self.settings.sec_max_connections:
            self.hit("max_connections", ip)
            return False
        if self.conns.per_ip.get(ip, 0) >= self.settings.sec_max_connections_per_ip:
            self.hit("max_connections_per_ip", ip)
            return False
        return True

    def release(self, ip: str) -> None:
        if self.shared is not None:
            self.shared.conns.release(self.worker, ip)

    def allow_handshake(self, ip: str | None) -> bool:
        """May ``ip`` start another TLS handshake this second (VANE_SEC_TLS_HANDSHAKES_PER_IP;
        0: no limit)?"""
        if not self.settings.sec_tls_handshakes_per_ip:
            return True
        ip = ip or ""
        now = self.clock()
        if self.shared is not None:
            if self.shared.handshakes.hit(ip, now, self.settings.sec_tls_handshakes_per_ip):
                return True
            self.hit("tls_handshakes_per_ip", ip)
            return False
        slot = self._handshakes.get(ip)
        if slot is None or now - slot[0] >= 1.0:
            self._handshakes[ip] = [now, 1]
            self._handshakes.move_to_end(ip)
            while len(self._handshakes) > MAX_TRACKED_IPS:
                self._handshakes.popitem(last=False)
            return True
        slot[1] += 1
        if slot[1] > self.settings.sec_tls_handshakes_per_ip:
            self.hit("tls_handshakes_per_ip", ip)
            return False
        return True
