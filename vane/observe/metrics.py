"""Prometheus metrics for vaned (DESIGN.md §9 ``get_metrics``).

``Metrics`` owns a private ``CollectorRegistry`` (several daemons in one test process never
share state). The daemon calls small methods on the hot path (``conn_opened``, ``request``,
...): connection and request counts are kept as plain numbers and folded into the
prometheus_client families (each update of which takes a lock) when metrics are read or a
batch is full. Label values come from the
config (rule, listener, upstream and plugin names) and are bounded by it; as a second fence
each metric keeps at most ``max_series`` label sets and folds the rest into ``"other"``.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from typing import Any, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as prom_values
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

__all__ = ["CONTENT_TYPE", "Metrics", "OTHER", "enable_multiprocess", "mark_process_dead"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
OTHER = "other"
REQUEST_BATCH = 512  # request observations folded in at once


class _Family:
    """A labelled metric with a capped, cached set of children."""

    __slots__ = ("metric", "max_series", "_children", "_n_labels", "overflowed")

    def __init__(self, metric: Any, n_labels: int, max_series: int) -> None:
        self.metric = metric
        self.max_series = max_series
        self._children: dict[tuple, Any] = {}
        self._n_labels = n_labels
        self.overflowed = 0

    def child(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is not None:
            return child
        if len(self._children) >= self.max_series:
            self.overflowed += 1
            values = (OTHER,) * self._n_labels
            child = self._children.get(values)
            if child is not None:
                return child
        child = self.metric.labels(*values)
        self._children[values] = child
        return child

    def __len__(self) -> int:
        return len(self._children)


class _RuleTally:
    """What one rule's finished requests add up to since the last fold: counts by status, and
    the request-duration histogram's bucket hits and sum."""

    __slots__ = ("statuses", "hits", "total")

    def __init__(self, buckets: int) -> None:
        self.statuses: dict[int | None, int] = {}
        self.hits = [0] * buckets
        self.total = 0.0


def enable_multiprocess(path: str) -> None:
    """Every metric value made from now on, in this process and in the processes it forks,
    lives in a file of ``path`` named by its pid (prometheus_client's multiprocess mode): a
    ``Metrics`` that ``aggregate``s reads them all. Call before the first ``Metrics``."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    prom_values.ValueClass = prom_values.MultiProcessValue()


def status_class(status: int | None) -> str:
    """200 -> "2xx"; None or out of range -> "none"."""
    if status is None or not 100 <= status <= 599:
        return "none"
    return f"{status // 100}xx"


class Metrics:
    """The daemon's metric families and the cheap calls that update them."""

    def __init__(self, max_series: int = 1000, buckets: Sequence[float] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._tallies: dict[str | None, _RuleTally] = {}  # by rule (None: no rule matched), since the last fold
        self._pending = 0      # requests in the tallies
        self._folded = 0       # requests folded in so far
        self._conns: dict[str, list[int]] = {}  # listener -> [opened, closed] since the last flush
        r = self.registry
        cap = max_series

        def fam(metric: Any, n: int) -> _Family:
            return _Family(metric, n, cap)

        self._exposed = r    # what render_prometheus and as_json read
        self.connections_active = fam(
            Gauge("vane_connections_active", "Open client connections.", ["listener"], registry=r,
                  multiprocess_mode="livesum"), 1)
        self.connections_total = fam(
            Counter("vane_connections_total", "Accepted client connections.", ["listener"], registry=r), 1)
        self.requests_total = fam(
            Counter("vane_requests_total", "Finished HTTP requests.", ["rule", "status_class"], registry=r), 2)
        hist_kw: dict[str, Any] = {"buckets": tuple(buckets)} if buckets else {}
        self.request_duration = fam(
            Histogram("vane_request_duration_seconds", "HTTP request duration.", ["rule"],
                      registry=r, **hist_kw), 1)
        self._bounds = list(self.request_duration.metric._upper_bounds)  # the last one is +Inf
        self.upstream_errors = fam(
            Counter("vane_upstream_errors_total", "Upstream failures by kind.", ["upstream", "kind"],
                    registry=r), 2)
        self.plugin_errors = fam(
            Counter("vane_plugin_errors_total", "Plugin runtime errors.", ["plugin"], registry=r), 1)
        self.breaker_open = fam(
            Gauge("vane_breaker_open", "1 while an external plugin's circuit breaker is open.", ["plugin"],
                  registry=r, multiprocess_mode="livemax"), 1)
        self.reloads_total = fam(
            Counter("vane_reloads_total", "Config reloads by result.", ["result"], registry=r), 1)
        self.floor_hits = fam(
            Counter("vane_floor_hits_total", "Security-floor limit breaches.", ["limit"], registry=r), 1)
        self.ratelimit_fallbacks = fam(
            Counter("vane_ratelimit_store_fallbacks_total",
                    "ratelimit decisions taken locally because the shared store did not answer.",
                    ["store"], registry=r), 1)

    # hot path --------------------------------------------------------------------
    def conn_opened(self, listener: str) -> None:
        counts = self._conns.get(listener)
        if counts is None:
            counts = self._conns[listener] = [0, 0]
        counts[0] += 1

    def conn_closed(self, listener: str) -> None:
        counts = self._conns.get(listener)
        if counts is None:
            counts = self._conns[listener] = [0, 0]
        counts[1] += 1

    def request(self, rule: str | None, status: int | None, seconds: float) -> None:
        """One finished HTTP request; ``rule`` None means no rule matched.

        The hot path only adds to its rule's tally (no locks, no label lookups, nothing
        allocated once the rule and status were seen); the tallies are folded into the
        prometheus families when enough requests are in or when metrics are read.
        """
        tally = self._tallies.get(rule)
        if tally is None:
            tally = self._tallies[rule] = _RuleTally(len(self._bounds))
        statuses = tally.statuses
        statuses[status] = statuses.get(status, 0) + 1
        tally.hits[bisect_left(self._bounds, seconds)] += 1
        tally.total += seconds
        self._pending += 1
        if self._pending >= REQUEST_BATCH:
            self.flush()

    def flush(self) -> None:
        """Fold the counted connections and the request tallies into the families."""
        conns, self._conns = self._conns, {}
        for listener, (opened, closed) in conns.items():
            if opened:
                self.connections_total.child(listener).inc(opened)
            if opened != closed:
                self.connections_active.child(listener).inc(opened - closed)
        tallies, self._tallies = self._tallies, {}
        self._folded += self._pending
        self._pending = 0
        for rule, tally in tallies.items():
            name = rule or "none"
            for status, n in tally.statuses.items():
                self.requests_total.child(name, status_class(status)).inc(n)
            # one update per bucket, not per request: into the child's own per-bucket values
            # (prometheus_client's histogram children have had them in every supported release)
            child = self.request_duration.child(name)
            for i, n in enumerate(tally.hits):
                if n:
                    child._buckets[i].inc(n)
            child._sum.inc(tally.total)

    @property
    def requests_seen(self) -> int:
        """HTTP requests finished in this process so far."""
        return self._folded + self._pending

    def upstream_error(self, upstream: str, kind: str) -> None:
        """``kind``: e.g. "connect", "timeout", "reset", "protocol", "tls"."""
        self.upstream_errors.child(upstream, kind).inc()

    def plugin_error(self, plugin: str) -> None:
        self.plugin_errors.child(plugin).inc()

    def breaker(self, plugin: str, is_open: bool) -> None:
        self.breaker_open.child(plugin).set(1 if is_open else 0)

    def reload(self, result: str) -> None:
        """``result``: "reloaded", "unchanged" or "failed"."""
        self.reloads_total.child(result).inc()

    def floor_hit(self, limit: str) -> None:
        self.floor_hits.child(limit).inc()

    def ratelimit_fallback(self, store: str) -> None:
        self.ratelimit_fallbacks.child(store).inc()

    # exposition ------------------------------------------------------------------
    def aggregate(self, path: str) -> None:
        """Expose the sum of every process's values in ``path`` (``enable_multiprocess``)."""
        self._exposed = CollectorRegistry()
        MultiProcessCollector(self._exposed, path=path)

    def expose(self, collector: Any) -> None:
        """Add ``collector`` (a prometheus_client custom collector) to what is exposed."""
        self._exposed.register(collector)

    def render_prometheus(self) -> bytes:
        """The text exposition format (``CONTENT_TYPE``)."""
        self.flush()
        return generate_latest(self._exposed)

    def as_json(self) -> dict:
        """``{"families": [{"name", "type", "help", "samples": [{"name", "labels", "value"}]}]}``."""
        self.flush()
        families = []
        for fam in self._exposed.collect():
            samples = [
                {"name": s.name, "labels": dict(s.labels), "value": s.value}
                for s in fam.samples
                if not s.name.endswith("_created")
            ]
            families.append({"name": fam.name, "type": fam.type, "help": fam.documentation, "samples": samples})
        return {"families": families}
