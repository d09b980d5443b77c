"""The daemon's upstream groups (daemon-scoped state, DESIGN.md §7).

``UpstreamRegistry`` keeps the live ``Group`` of every group the serving graph uses, keyed
by the digest of its definition. Linking a graph (off the hub) reuses the live group of an
unchanged definition (``peek``) and builds new ones for the rest; ``serve`` (on the hub, when
the graph becomes the serving one) adopts them, starts their health checkers and stops those
of groups the graph no longer has. So health state, drained and disabled backends survive a
reload that leaves a group alone and start afresh when it changes.

It answers the management verbs (``snapshot``, ``set_state``) and is a Prometheus collector:
``vane_upstream_up{group,backend}``, ``vane_upstream_active{group,backend}`` and
``vane_upstream_health_checks_total{group,backend,result}``, whose label values come from
the config only.
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from vane.net.upstream.group import CHECK_RESULTS, DISABLED, DRAINING, ENABLED, Group
from vane.net.upstream.health import Checker

__all__ = ["ACTIONS", "UpstreamRegistry", "link_group", "upstream_families"]

# the operator's words and the admin state each sets
ACTIONS = {"enable": ENABLED, "drain": DRAINING, "disable": DISABLED}


class UpstreamRegistry:
    """Live upstream groups by definition digest, and their health checkers."""

    def __init__(self, metrics: Any = None) -> None:
        self._by_digest: dict[str, Group] = {}
        self._by_name: dict[str, Group] = {}
        registry = getattr(metrics, "registry", None)
        if registry is not None:
            registry.register(self)

    # -- graphs --------------------------------------------------------------------------------

    def peek(self, digest: str) -> Group | None:
        """The live group of this definition, if any (read only: safe off the hub)."""
        return self._by_digest.get(digest)

    def serve(self, graph: Any) -> None:
        """``graph`` is the serving one now: adopt its groups, start and stop health checks."""
        table = getattr(graph, "upstreams", None)
        live: dict[str, Group] = {}
        for defn in (table.groups.values() if table is not None else ()):
            group = defn.runtime
            if group is None:
                continue                # declared, used by no node
            existing = self._by_digest.get(defn.digest)
            if existing is not None and existing is not group:
                defn.runtime = group = existing
            live[defn.digest] = group
        for digest, group in self._by_digest.items():
            if digest not in live:
                self._retire(group)
        for group in live.values():
            group.retired = False
            if group.health is not None and group.checker is None:
                group.checker = Checker(group)
                group.checker.start()
        self._by_digest = live
        self._by_name = {g.name: g for g in live.values()}

    @staticmethod
    def _retire(group: Group) -> None:
        group.retired = True
        if group.checker is not None:
            group.checker.stop()
            group.checker = None

    def close(self) -> None:
        """Stop every health checker (daemon shutdown)."""
        for group in self._by_digest.values():
            self._retire(group)

    # -- management ----------------------------------------------------------------------------

    def group(self, name: str) -> Group:
        group = self._by_name.get(name)
        if group is None:
            names = ", ".join(sorted(self._by_name)) or "none"
            raise LookupError(f'no upstream group "{name}" (groups: {names})')
        return group

    def set_state(self, name: str, backend: str, action: str) -> dict:
        """``action`` "drain", "disable" or "enable" on one backend of group ``name``;
        LookupError when either is unknown."""
        group = self.group(name)
        b = group.find(backend)
        previous = b.state
        group.set_admin(b, ACTIONS[action])
        return {"group": group.name, "backend": b.label, "state": b.state, "previous": previous}

    def snapshot(self) -> list[dict]:
        """One row per backend of every served group."""
        rows: list[dict] = []
        for name in sorted(self._by_name):
            rows.extend(self._by_name[name].snapshot())
        return rows

    # -- Prometheus ----------------------------------------------------------------------------

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[Any]:
        yield from upstream_families(self.snapshot())


def upstream_families(rows: list[dict]) -> Iterator[Any]:
    """The upstream metric families of ``snapshot`` rows (one process's, or a master's merge)."""
    up = GaugeMetricFamily("vane_upstream_up", "1 while the backend takes new requests "
                                               "(not down, draining or disabled).", labels=["group", "backend"])
    active = GaugeMetricFamily("vane_upstream_active", "Requests (L4: connections) in flight to the backend.",
                               labels=["group", "backend"])
    checks = CounterMetricFamily("vane_upstream_health_checks", "Active health checks by result.",
                                 labels=["group", "backend", "result"])
    for row in rows:
        labels = [row["group"], row["backend"]]
        up.add_metric(labels, 1.0 if row["state"] == "up" else 0.0)
        active.add_metric(labels, float(row["active"]))
        if row["health"] is not None:
            for result in CHECK_RESULTS:
                checks.add_metric([*labels, result], float(row["checks"].get(result, 0)))
    yield up
    yield active
    yield checks


def link_group(defn: Any, services: Any, config_dir: str | None) -> Group:
    """The live group of ``defn`` for a graph being linked: the daemon's own while the
    definition is unchanged, else a new one, built here (linking runs off the hub) and adopted
    by ``serve`` when the graph starts serving. Raises ``GroupError`` for a bad backend."""
    if defn.runtime is None:
        registry = getattr(services, "upstreams", None) if services is not None else None
        existing = registry.peek(defn.digest) if registry is not None else None
        defn.runtime = existing if existing is not None else Group(defn, config_dir)
    return defn.runtime
