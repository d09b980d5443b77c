"""The daemon-scoped upstream connection pool (DESIGN.md §1 housekeeping, §7 daemon-scoped state).

One ``Endpoint`` per (address, TLS options, HTTP version). HTTP/1.1 connections are leased
one request at a time and come back when the response body ends (keep-alive reuse, LIFO, at
most ``max_idle_per_host`` idle); at most ``max_active_per_host`` are leased at once and
further callers wait up to the connect timeout. HTTP/2 connections are shared by many
streams. A reaper greenlet closes connections idle past ``idle_timeout``.

Fair shares: leases (HTTP/1.1 connections and HTTP/2 streams) are counted per client IP, and
one client holds at most ``max_active_per_client`` of an endpoint's leases at once (default a
quarter of ``max_active_per_host``, at least 2); its further requests wait for one of its own
leases to end, then get 503. Clients that do not read their responses cannot take every
connection to a backend away from the others.

The pool survives reloads; ``configure`` applies config.json's ``upstream_pool`` section.
Endpoints are keyed by the configured upstream (a templated upstream could make that client
data), so their number is capped: past ``MAX_ENDPOINTS`` an endpoint is transient (no reuse).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping

import gevent
from gevent.event import Event

from vane.net.http.errors import UpstreamBusy, UpstreamConnectError, UpstreamTimeout
from vane.net.upstream.connect import connect
from vane.net.upstream.endpoint import Endpoint, EndpointSpec, PooledH1

__all__ = ["DEFAULTS", "Endpoint", "EndpointSpec", "PoolTimeout", "PooledH1", "UpstreamPool", "pool_for"]

log = logging.getLogger("vane.upstream")

MAX_ENDPOINTS = 1024
H2_STREAMS_PER_CONN = 100
_monotonic = time.monotonic

DEFAULTS: dict[str, float | None] = {"max_idle_per_host": 128, "max_active_per_host": 256, "idle_timeout": 60.0,
                                     "connect_timeout": 5.0, "max_active_per_client": None,
                                     "response_buffer": 262144}


class PoolTimeout(UpstreamTimeout):
    """No free connection or stream within the connect timeout: the pool's own limit, not a
    failure of the backend (passive health does not count it)."""

    local = True


class UpstreamPool:
    """Keep-alive connections to backends, shared by every graph the daemon serves."""

    def __init__(self, settings: Any = None, metrics: Any = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.max_idle = int(DEFAULTS["max_idle_per_host"])
        self.max_active = int(DEFAULTS["max_active_per_host"])
        self.idle_timeout = float(DEFAULTS["idle_timeout"])
        self.connect_timeout = float(DEFAULTS["connect_timeout"])
        self.max_per_client = max(2, self.max_active // 4)
        self.response_buffer = int(DEFAULTS["response_buffer"])
        self.max_header_bytes = getattr(settings, "sec_max_header_bytes", 65536) if settings else 65536
        # what one HTTP/2 upstream stream may have in flight towards vaned (and so buffer while
        # the client reads slowly): the same window vaned gives its own HTTP/2 clients
        self.h2_stream_window = getattr(settings, "sec_h2_stream_window", 1 << 20) if settings else 1 << 20
        self._eps: dict[str, Endpoint] = {}
        self._reaper: Any = None
        self._closed = False

    # -- configuration ---------------------------------------------------------------------------

    def configure(self, options: Mapping[str, Any] | None) -> None:
        """Apply config.json ``upstream_pool``; keys left out go back to their defaults."""
        opts = dict(DEFAULTS)
        opts.update({k: v for k, v in (options or {}).items() if k in DEFAULTS and v is not None})
        self.max_idle = max(0, int(opts["max_idle_per_host"]))
        self.max_active = max(1, int(opts["max_active_per_host"]))
        self.idle_timeout = max(0.0, float(opts["idle_timeout"]))
        self.connect_timeout = max(0.001, float(opts["connect_timeout"]))
        per_client = opts["max_active_per_client"]
        self.max_per_client = max(1, int(per_client)) if per_client is not None else max(2, self.max_active // 4)
        self.response_buffer = max(0, int(opts["response_buffer"]))
        for ep in self._eps.values():
            while len(ep.idle) > self.max_idle:
                ep.idle.pop(0).close()
            self._wake(ep)

    # -- endpoints -------------------------------------------------------------------------------

    def endpoint(self, spec: EndpointSpec) -> Endpoint:
        ep = self._eps.get(spec.key)
        if ep is not None:
            return ep
        if self._closed:
            return Endpoint(spec, transient=True)
        if len(self._eps) >= MAX_ENDPOINTS:
            self._evict()
            if len(self._eps) >= MAX_ENDPOINTS:
                return Endpoint(spec, transient=True)
        ep = self._eps[spec.key] = Endpoint(spec)
        if self._reaper is None:
            self._reaper = gevent.spawn(self._reap_loop)
        return ep

    def _evict(self) -> None:
        for key, ep in list(self._eps.items()):
            if ep.empty():
                del self._eps[key]

    # -- leasing ---------------------------------------------------------------------------------

    def acquire(self, ep: Endpoint, connect_timeout: float | None = None, fresh: bool = False,
                probe: bool = False, client: str | None = None, backend: Any = None) -> Any:
        """A connection for one request: a leased ``PooledH1`` or a shared H2 connection.

        ``fresh`` skips idle connections (a retry after a stale one). ``probe`` checks an idle
        connection for staleness first (for requests that must not be retried). ``client``
        (an IP) draws on that client's share of the endpoint: for a ``PooledH1`` the share
        comes back with the lease, for an HTTP/2 connection the caller passes
        ``client_done(ep, client)`` as the stream's ``on_done``. Waits for a free slot up to
        the connect timeout; raises ``UpstreamConnectError`` / ``UpstreamTimeout`` /
        ``UpstreamBusy``.

        ``backend`` (a group's ``Backend``) counts the request as in flight from now until
        the lease ends (HTTP/2: the caller passes ``stream_done(ep, client, backend)``).
        """
        timeout = connect_timeout if connect_timeout is not None else self.connect_timeout
        ep.last_used = _monotonic()
        if client is not None:
            self._take_share(ep, client, timeout)
        if backend is not None:
            backend.begin()
        try:
            conn = self._acquire(ep, timeout, fresh, probe)
        except BaseException:
            if client is not None:
                self.client_done(ep, client)
            if backend is not None:
                backend.end()
            raise
        if conn.__class__ is PooledH1:
            conn.client = client
            conn.backend = backend
        return conn

    def _acquire(self, ep: Endpoint, timeout: float, fresh: bool, probe: bool) -> Any:
        if ep.proto == "h2":
            return self._acquire_h2(ep, timeout)
        if ep.active >= self.max_active:
            self._wait_slot(ep, timeout)
            if ep.proto == "h2":            # learnt while waiting
                return self._acquire_h2(ep, timeout)
        idle = ep.idle
        while idle and not fresh:
            conn = idle.pop()
            if probe and not conn.alive():
                conn.close()
                continue
            ep.active += 1
            conn.leased = True
            conn.reused = True
            ep.reuses += 1
            return conn
        learning = None
        if ep.proto is None:                # https, ALPN not seen yet: one connect finds out
            if ep.connecting is not None:
                started = _monotonic()
                ep.connecting.wait(timeout)
                return self._acquire(ep, max(timeout - (_monotonic() - started), 0.001), fresh, probe)
            learning = ep.connecting = Event()
        ep.active += 1
        try:
            stream, alpn = self._connect(ep, timeout)
        except BaseException:
            ep.active -= 1
            self._wake(ep)
            raise
        finally:
            if learning is not None:
                ep.connecting = None
                learning.set()
        if alpn == "h2":
            ep.active -= 1
            self._wake(ep)
            ep.proto = "h2"
            return self._add_h2(ep, stream)
        if ep.proto is None:
            ep.proto = "h1"
        conn = PooledH1(stream, ep, self._release)
        conn.max_header_bytes = self.max_header_bytes
        conn.leased = True
        return conn

    def _wait_slot(self, ep: Endpoint, timeout: float) -> None:
        deadline = _monotonic() + timeout
        while ep.active >= self.max_active and ep.proto != "h2":
            remaining = deadline - _monotonic()
            ev = Event()
            ep.waiters.append(ev)
            try:
                ok = remaining > 0 and ev.wait(remaining)
            finally:
                try:
                    ep.waiters.remove(ev)
                except ValueError:
                    pass
            if not ok and ep.active >= self.max_active:
                raise PoolTimeout(
                    f"no free connection to {ep.label} within {timeout:g}s "
                    f"({self.max_active} in use, max_active_per_host)")

    # -- client shares ---------------------------------------------------------------------------

    def _share_free(self, ep: Endpoint, client: str) -> bool:
        """May ``client`` take one more lease on ``ep`` now?"""
        return ep.by_client.get(client, 0) < self.max_per_client

    def _take_share(self, ep: Endpoint, client: str, timeout: float) -> None:
        if not self._share_free(ep, client):
            deadline = _monotonic() + timeout
            while not self._share_free(ep, client):
                remaining = deadline - _monotonic()
                ev = Event()
                entry = (client, ev)
                ep.share_waiters.append(entry)
                try:
                    ok = remaining > 0 and ev.wait(remaining)
                finally:
                    try:
                        ep.share_waiters.remove(entry)
                    except ValueError:
                        pass
                if not ok and not self._share_free(ep, client):
                    raise UpstreamBusy(f"this client holds {ep.by_client.get(client, 0)} of the busy "
                                       f"connections to {ep.label} (max_active_per_client)")
        ep.by_client[client] = ep.by_client.get(client, 0) + 1

    def client_done(self, ep: Endpoint, client: str) -> None:
        """One of ``client``'s leases on ``ep`` ended (a stream, a connection)."""
        left = ep.by_client.get(client, 1) - 1
        if left > 0:
            ep.by_client[client] = left
        else:
            ep.by_client.pop(client, None)
        for waiting, ev in ep.share_waiters:
            if self._share_free(ep, waiting):
                ev.set()
                break

    def stream_done(self, ep: Endpoint, client: str | None, backend: Any) -> None:
        """An HTTP/2 stream of a group backend ended: its share and its count in flight."""
        if client is not None:
            self.client_done(ep, client)
        backend.end()

    def _unlease(self, conn: PooledH1) -> None:
        conn.leased = False
        ep = conn.endpoint
        ep.active -= 1
        client, conn.client = conn.client, None
        if client is not None:
            self.client_done(ep, client)
        backend, conn.backend = conn.backend, None
        if backend is not None:
            backend.end()

    def _release(self, conn: PooledH1) -> None:
        """A response body ended (or was dropped): keep the connection or close it."""
        if not conn.leased:
            return
        self._unlease(conn)
        ep = conn.endpoint
        if conn.reusable and not ep.transient and not self._closed and len(ep.idle) < self.max_idle:
            conn.idle_since = _monotonic()
            ep.idle.append(conn)
        else:
            conn.close()
        if ep.waiters:
            self._wake(ep)

    def discard(self, conn: Any) -> None:
        """The request failed on ``conn`` (or the stream was taken over): give the slot back."""
        if isinstance(conn, PooledH1):
            if conn.leased:
                self._unlease(conn)
                self._wake(conn.endpoint)
            conn.close()

    def forget(self, conn: PooledH1) -> None:
        """Give the slot back without closing: the stream was detached (WebSocket)."""
        if conn.leased:
            self._unlease(conn)
            self._wake(conn.endpoint)

    @staticmethod
    def _wake(ep: Endpoint) -> None:
        if ep.waiters:
            ep.waiters[0].set()

    # -- HTTP/2 ----------------------------------------------------------------------------------

    def _acquire_h2(self, ep: Endpoint, timeout: float) -> Any:
        deadline = _monotonic() + timeout
        cap = max(1, -(-self.max_active // H2_STREAMS_PER_CONN))
        while True:
            live = []
            for conn in ep.h2:
                if not conn.closed:
                    live.append(conn)
                    if conn.is_available():
                        if len(live) != len(ep.h2):
                            ep.h2 = [c for c in ep.h2 if not c.closed]
                        return conn
            ep.h2 = live
            remaining = deadline - _monotonic()
            if remaining <= 0:
                raise PoolTimeout(f"no HTTP/2 stream available to {ep.label} within {timeout:g}s")
            if ep.connecting is not None:
                ep.connecting.wait(remaining)
                continue
            if len(live) >= cap:
                gevent.sleep(0.005)         # every stream slot is busy: poll for one to end
                continue
            ev = ep.connecting = Event()
            try:
                stream, alpn = self._connect(ep, remaining)
            finally:
                ep.connecting = None
                ev.set()
            if ep.spec.upstream.tls and alpn != "h2":
                stream.close()
                if ep.spec.version == "h2":
                    raise UpstreamConnectError(f"{ep.label} did not negotiate HTTP/2 (ALPN {alpn!r})")
                ep.proto = "h1"
                return self._acquire(ep, remaining, False, False)
            return self._add_h2(ep, stream)

    def _add_h2(self, ep: Endpoint, stream: Any) -> Any:
        from vane.net.h2.client import H2ClientConnection
        try:
            conn = H2ClientConnection(stream, max_streams=H2_STREAMS_PER_CONN, stream_buffer=self.h2_stream_window,
                                      max_header_list_size=self.max_header_bytes)
        except OSError as exc:
            stream.close()
            raise UpstreamConnectError(f"HTTP/2 preface to {ep.label} failed: {exc}") from None
        if not ep.transient:
            ep.h2.append(conn)
        return conn

    # -- connecting ------------------------------------------------------------------------------

    def _connect(self, ep: Endpoint, timeout: float) -> tuple[Any, str | None]:
        ep.connects += 1
        return connect(ep.spec, timeout)

    # -- housekeeping ----------------------------------------------------------------------------

    def _reap_loop(self) -> None:
        while not self._closed:
            gevent.sleep(min(max(self.idle_timeout / 2.0, 0.05), 5.0))
            try:
                self.reap()
            except Exception:  # noqa: BLE001 - housekeeping must never die
                log.exception("upstream pool reaper failed")

    def reap(self, now: float | None = None) -> int:
        """Close connections idle past ``idle_timeout``; drop empty endpoints. Returns closures."""
        now = _monotonic() if now is None else now
        limit = now - self.idle_timeout
        closed = 0
        for key, ep in list(self._eps.items()):
            if ep.idle:
                keep = [c for c in ep.idle if c.idle_since > limit]
                for conn in ep.idle:
                    if conn.idle_since <= limit:
                        conn.close()
                        closed += 1
                ep.idle = keep
            if ep.h2:
                live = []
                for conn in ep.h2:
                    if conn.closed:
                        continue
                    if conn.active_streams == 0 and conn.last_used <= limit:
                        conn.close()
                        closed += 1
                        continue
                    live.append(conn)
                ep.h2 = live
            if ep.empty() and ep.last_used <= limit:
                del self._eps[key]
        return closed

    def snapshot(self) -> list[dict]:
        """One row per endpoint for ``get_upstreams``."""
        rows = []
        for ep in self._eps.values():
            h2 = [c for c in ep.h2 if not c.closed]
            streams = sum(c.active_streams for c in h2)
            rows.append({"upstream": ep.label, "idle": len(ep.idle) + sum(1 for c in h2 if not c.active_streams),
                         "active": ep.active + streams, "max_idle": self.max_idle,
                         "max_active": self.max_active, "protocol": ep.proto or "auto",
                         "h2_connections": len(h2), "waiting": len(ep.waiters) + len(ep.share_waiters),
                         "clients": len(ep.by_client), "max_active_per_client": self.max_per_client,
                         "connects": ep.connects, "reuses": ep.reuses})
        return rows

    def close(self) -> None:
        """Close every idle connection and stop the reaper (daemon shutdown)."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.kill(block=False)
            self._reaper = None
        for ep in self._eps.values():
            for conn in ep.idle:
                conn.close()
            ep.idle = []
            for conn in ep.h2:
                conn.close()
            ep.h2 = []
            for ev in ep.waiters:
                ev.set()
            for _, ev in ep.share_waiters:
                ev.set()


_shared: UpstreamPool | None = None


def pool_for(services: Any) -> UpstreamPool:
    """The daemon's pool, or one process-wide pool when plugins run without a daemon (tests)."""
    if services is not None:
        return services.pool
    global _shared
    if _shared is None:
        _shared = UpstreamPool()
    return _shared
