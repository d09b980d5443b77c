"""Connection accounting: who is connected, through which listener and rule, bytes moved.

One record per accepted TCP connection or UDP session, created at accept and dropped when
its greenlet ends. The per-IP counts feed the security floor and hold only IPs with open
connections, so they are bounded by the connection limit.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

from vane.net.tunnel import Counters


class ConnRecord:
    __slots__ = ("id", "remote", "local", "listener", "proto", "started", "counters", "ctx", "greenlet",
                 "upstream", "requests", "parked", "finish")

    def __init__(self, conn_id: str, remote: tuple, local: tuple, listener: Any, proto: str) -> None:
        self.id = conn_id
        self.remote = remote
        self.local = local
        self.listener = listener      # the Listener object (its addr names it)
        self.proto = proto
        self.started = time.monotonic()
        self.counters = Counters()
        self.ctx: Any = None          # the context running now (L4, or the current HTTP request)
        self.greenlet: Any = None
        self.upstream: str | None = None
        self.requests = 0
        self.parked: Any = None       # an idle keep-alive connection waiting without a greenlet
        self.finish: Any = None       # ends the connection: close, accounting, flow log

    def abort(self) -> None:
        """End the connection now (drain budget exhausted, shutdown)."""
        if self.parked is not None:
            self.parked.close()
        elif self.greenlet is not None:
            self.greenlet.kill(block=False)

    def to_dict(self) -> dict:
        ctx = self.ctx
        return {
            "id": self.id,
            "remote": _fmt(self.remote), "local": _fmt(self.local),
            "listener": self.listener.label, "proto": self.proto,
            "rule": ctx.rule if ctx is not None else None,
            "node": ctx.node if ctx is not None else "",
            "layer": ctx.layer if ctx is not None else "l4",
            "upstream": self.upstream, "requests": self.requests, "idle": self.parked is not None,
            "bytes_in": self.counters.up, "bytes_out": self.counters.down,
            "age_secs": round(time.monotonic() - self.started, 3),
        }


def _fmt(addr: tuple) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ConnTable:
    def __init__(self) -> None:
        self._records: dict[str, ConnRecord] = {}
        self.per_ip: dict[str, int] = {}
        self.total = 0

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[ConnRecord]:
        return iter(list(self._records.values()))

    def add(self, record: ConnRecord) -> None:
        self._records[record.id] = record
        ip = record.remote[0]
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        self.total += 1

    def remove(self, record: ConnRecord) -> None:
        if self._records.pop(record.id, None) is None:
            return
        ip = record.remote[0]
        left = self.per_ip.get(ip, 1) - 1
        if left <= 0:
            self.per_ip.pop(ip, None)
        else:
            self.per_ip[ip] = left

    def of_listener(self, listener: Any) -> list[ConnRecord]:
        return [r for r in self._records.values() if r.listener is listener]
