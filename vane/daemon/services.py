"""Daemon-scoped state (DESIGN.md §7): what survives a reload, and the hub's thread pool.

``Services`` is what plugins reach through ``LinkEnv.services``: settings, metrics, the flow
log, the connection table, the security floor, TLS contexts, the upstream pool and the
``ratelimit`` stores, the access log. One per serving process; a worker inherits the master's at fork and
then owns its copy (the limits in ``shared_limits`` are the only state workers share).
"""

from __future__ import annotations

from typing import Any

import gevent
from gevent.event import Event

from vane.compile import FlowGraph
from vane.compile.listen import Trusted, trusted_of
from vane.config.settings import Settings
from vane.flow.connection import ConnTable
from vane.net.parking import Parking
from vane.net.upstream.registry import UpstreamRegistry
from vane.observe import accesslog
from vane.observe.flowlog import FlowLog
from vane.observe.metrics import Metrics

from .floor import Floor


def off_hub(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` in the hub's thread pool; its exception is raised here, in the caller
    (the pool itself would print it as a crash)."""
    def call() -> tuple[bool, Any]:
        try:
            return True, fn(*args)
        except Exception as exc:  # noqa: BLE001 - handed back to the calling greenlet
            return False, exc

    ok, value = gevent.get_hub().threadpool.apply(call)
    if not ok:
        raise value
    return value


class Services:
    """Daemon-scoped state plugins may use; it survives reloads (DESIGN.md §7)."""

    def __init__(self, settings: Settings, metrics: Metrics, flow_log: FlowLog, conns: ConnTable) -> None:
        self.settings = settings
        self.metrics = metrics
        self.flow_log = flow_log
        self.conns = conns
        self.access_log = accesslog.from_settings(settings, off_hub)   # None when off; opened at boot
        self.floor = Floor(settings, conns, metrics)
        self._tls_cache = None
        self._acme: Any = None
        self._acme_challenges: Any = None
        self.parking = Parking()
        self.draining = Event()
        self._pool = None
        self.pool_config: dict | None = None
        self.shared_limits: Any = None   # SharedLimits when this process is one of several workers
        self._ratelimit_stores: dict[str, Any] = {}
        self._local_buckets: Any = None
        self.upstreams = UpstreamRegistry(metrics)  # upstream groups: health and admin state across reloads
        self._graph: FlowGraph | None = None
        self.trusted_proxies: Trusted | None = None   # config.json trusted_proxies (req.client_ip)

    @property
    def graph(self) -> FlowGraph | None:
        """The graph serving now (requests look theirs up in it)."""
        return self._graph

    @graph.setter
    def graph(self, graph: FlowGraph | None) -> None:
        self._graph = graph
        if graph is not None:
            self.upstreams.serve(graph)     # on the hub, before any request sees the graph
            self.trusted_proxies = trusted_of(graph.sources.config.get("trusted_proxies"))

    @property
    def tls_cache(self) -> Any:
        """Daemon-scoped TLS contexts (session tickets survive reloads); pyOpenSSL loads on first use."""
        if self._tls_cache is None:
            from vane.net.tls.certs import ContextCache
            self._tls_cache = ContextCache()
        return self._tls_cache

    @property
    def acme_challenges(self) -> Any:
        """The pending ACME challenges this process answers (HTTP-01 tokens, TLS-ALPN-01 certificates)."""
        if self._acme_challenges is None:
            from vane.acme.challenges import ChallengeBoard
            self._acme_challenges = ChallengeBoard()
        return self._acme_challenges

    @property
    def acme(self) -> Any:
        """The ACME certificates (``vane.acme.manager``), created on first use; their state
        lives under ``VANE_STATE_DIR``."""
        if self._acme is None:
            from vane.acme.manager import AcmeManager
            self._acme = AcmeManager(self.settings.state_dir or ".", self.tls_cache, self.acme_challenges)
        return self._acme

    @property
    def pool(self) -> Any:
        """The upstream connection pool, created on first use."""
        if self._pool is None:
            from vane.net.upstream.pool import UpstreamPool
            self._pool = UpstreamPool(self.settings, self.metrics)
            self._pool.configure(self.pool_config)
        return self._pool

    def ratelimit_store(self, url: str) -> Any:
        """The daemon-scoped ``ratelimit`` store for ``url`` (a Redis server), created on first
        use; it falls back to the daemon's own buckets while the server does not answer."""
        store = self._ratelimit_stores.get(url)
        if store is None:
            from vane.net.redis_buckets import RedisBuckets
            if self.shared_limits is not None:
                fallback = self.shared_limits.buckets
            else:
                if self._local_buckets is None:
                    from vane.plugins.builtin.ratelimit import DEFAULT_MAX_KEYS, LocalBuckets
                    self._local_buckets = LocalBuckets(DEFAULT_MAX_KEYS)
                fallback = self._local_buckets
            store = self._ratelimit_stores[url] = RedisBuckets(url, fallback, self.metrics)
        return store

    def close(self) -> None:
        """The process is ending: close upstream and store connections."""
        if self._pool is not None:
            self._pool.close()
        if self.access_log is not None:
            self.access_log.close()
        if self._acme is not None:
            self._acme.stop()
        self.upstreams.close()
        for store in self._ratelimit_stores.values():
            store.close()

    def configure_pool(self, config: dict | None) -> None:
        """config.json's ``upstream_pool`` (reloadable)."""
        self.pool_config = config
        if self._pool is not None:
            self._pool.configure(config)
