"""vaned in one process (DESIGN.md §7; seed 002): boot, serve, reload, drain.

Boot: load + compile (failure: exit non-zero) -> bind listeners -> management -> watcher ->
READY=1. Reload compiles afresh; on failure the old graph and listeners keep serving and the
error is kept for the ``reload`` verb; on success the graph reference is swapped (each
connection keeps the graph it started with) and the listener set is diffed. SIGTERM drains,
SIGINT closes now. With ``VANE_WORKERS`` above 1 the ``Master`` runs instead.

The daemon is also the management layer's ``DaemonAPI``: the verbs read its real state.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from typing import Any

import gevent

from vane import __version__
from vane.compile import FlowGraph
from vane.config.settings import Settings
from vane.flow.connection import ConnTable
from vane.net.listeners import activated_sockets, socket_key
from vane.observe.certmetrics import CertMetrics
from vane.observe.flowlog import FlowLog
from vane.observe.hub import Hub
from vane.observe.metrics import Metrics

from . import sdnotify
from .control import Control
from .server import Server
from .services import Services

log = logging.getLogger("vane.daemon")


def inherited_sockets() -> dict[tuple, Any]:
    """Sockets systemd passed (socket activation), by (transport, ip, port)."""
    out = {}
    for sock in activated_sockets():
        key = socket_key(sock)
        if key is not None:
            out[key] = sock
    return out


class Daemon(Control):
    """One process that steers and serves: a ``Control`` around one ``Server``."""

    def __init__(self, config_dir: str, settings: Settings, log_hub: Hub | None = None) -> None:
        super().__init__(config_dir, settings, log_hub)
        self.services = Services(settings, Metrics(), FlowLog(file_path=settings.flow_log_file), ConnTable())
        self.services.metrics.expose(CertMetrics(self.cert_rows))
        self.conns = self.services.conns
        self.server = Server(self.services)

    def boot(self) -> None:
        """Compile, link and start serving. Raises CompileFailed on a broken config."""
        graph = self._boot_graph()
        self.server.inherited = inherited_sockets()
        self.server.swap(graph)
        for key in self.server.inherited:
            log.warning("socket passed by systemd for %s %s:%s matches no listen address", *key)
        self._start_management()
        self._start_watching()
        self._acme(graph)
        if self.server.listeners:
            gevent.spawn(self._boot_health)
        gc.freeze()  # what boot built lives as long as the process: keep it out of every collection
        sdnotify.notify("READY=1")
        log.info("vaned %s serving graph %s (%d listeners)", __version__, graph.hash[:12],
                 len(self.server.listeners))

    # -- reload --------------------------------------------------------------------------------

    def _apply(self, graph: FlowGraph) -> tuple[list, list]:
        return self.server.swap(graph)

    def _unchanged(self) -> None:
        self.server.retry_failed()

    def _not_bound(self) -> list[dict]:
        return self.server.not_bound()

    # -- stop ----------------------------------------------------------------------------------

    def drain(self) -> None:
        """SIGTERM: stop accepting everywhere, finish in-flight up to the budget, abort the rest."""
        if self.draining:
            return
        self.draining = True
        sdnotify.notify("STOPPING=1")
        if self.watcher is not None:
            self.watcher.stop()
        self.server.drain()
        self._stop_control()

    def close_now(self) -> None:
        """SIGINT: close every connection now."""
        self.draining = True
        self.server.close_now()
        self._stop_control()

    # -- DaemonAPI (DESIGN.md §9) ----------------------------------------------------------------

    @property
    def listeners(self) -> dict:
        return self.server.listeners

    def stats(self) -> dict:
        return {
            "uptime_secs": round(time.time() - self.started, 3), "version": __version__, "pid": os.getpid(),
            "graph_hash": self.graph.hash if self.graph else None, "last_reload": self.last_reload,
            "listeners": self.server.listener_states(),
            "connections": {"active": len(self.conns), "total": self.conns.total},
            "draining": self.draining, "config_dir": self.config_dir,
            "access_log": self.services.access_log.stats() if self.services.access_log else None,
            "floor_hits": dict(self.services.floor.hits),
        }

    def get_listeners(self) -> list[dict]:
        return self.server.get_listeners()

    def get_connections(self) -> list[dict]:
        return self.server.get_connections()

    def get_plugins(self) -> list[dict]:
        return self._plugins(self.server.breakers())

    def get_upstreams(self) -> list[dict]:
        return self.server.get_upstreams()

    def get_upstream_groups(self) -> list[dict]:
        return self.services.upstreams.snapshot()

    def set_upstream(self, group: str, backend: str, action: str) -> dict:
        return self.services.upstreams.set_state(group, backend, action)

    def set_flow_log(self, level: str) -> dict:
        self.services.flow_log.level = level
        return {"level": level}
