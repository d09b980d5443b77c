"""vaned's lifecycle (DESIGN.md §7; seed 002): boot, serve, reload, drain.

Boot: load + compile (failure: exit non-zero) -> bind listeners -> management -> watcher ->
READY=1. Reload compiles afresh; on failure the old graph and listeners keep serving and the
error is kept for the ``reload`` verb; on success the graph reference is swapped (each
connection keeps the graph it started with) and the listener set is diffed. SIGTERM drains,
SIGINT closes now.

The daemon is also the management layer's ``DaemonAPI``: the verbs read its real state.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import time
from typing import Any

import gevent
from gevent.event import Event
from gevent.lock import Semaphore

from vane import __version__
from vane.compile import FlowGraph, compile_dir
from vane.config.errors import CompileFailed
from vane.config.settings import Settings
from vane.engine.plugin import LinkEnv
from vane.flow.connection import Connection, ConnTable, admit
from vane.mgmt.fds import raise_nofile_limit
from vane.net.listeners import Listener, activated_sockets, socket_key
from vane.net.parking import Parking
from vane.net.sockets import reset
from vane.net.upstream.registry import UpstreamRegistry
from vane.observe.flowlog import FlowLog
from vane.observe.hub import Hub
from vane.observe.metrics import Metrics

from . import sdnotify
from .floor import Floor
from .watcher import Watcher

log = logging.getLogger("vane.daemon")


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
        self.floor = Floor(settings, conns, metrics)
        self._tls_cache = None
        self.parking = Parking()
        self.draining = Event()
        self._pool = None
        self.pool_config: dict | None = None
        self.upstreams = UpstreamRegistry(metrics)  # upstream groups: health and admin state across reloads
        self._graph: FlowGraph | None = None

    @property
    def graph(self) -> FlowGraph | None:
        """The graph serving now (requests look theirs up in it)."""
        return self._graph

    @graph.setter
    def graph(self, graph: FlowGraph | None) -> None:
        self._graph = graph
        if graph is not None:
            self.upstreams.serve(graph)     # on the hub, before any request sees the graph

    @property
    def tls_cache(self) -> Any:
        """Daemon-scoped TLS contexts (session tickets survive reloads); pyOpenSSL loads on first use."""
        if self._tls_cache is None:
            from vane.net.tls.certs import ContextCache
            self._tls_cache = ContextCache()
        return self._tls_cache

    @property
    def pool(self) -> Any:
        """The upstream connection pool, created on first use."""
        if self._pool is None:
            from vane.net.upstream.pool import UpstreamPool
            self._pool = UpstreamPool(self.settings, self.metrics)
            self._pool.configure(self.pool_config)
        return self._pool

    def configure_pool(self, config: dict | None) -> None:
        """config.json's ``upstream_pool`` (reloadable)."""
        self.pool_config = config
        if self._pool is not None:
            self._pool.configure(config)


class Daemon:
    def __init__(self, config_dir: str, settings: Settings, log_hub: Hub | None = None) -> None:
        self.config_dir = os.path.abspath(config_dir)
        self.settings = settings
        self.started = time.time()
        self.log_hub = log_hub or Hub()
        self.metrics = Metrics()
        self.flow_log = FlowLog(file_path=settings.flow_log_file)
        self.conns = ConnTable()
        self.services = Services(settings, self.metrics, self.flow_log, self.conns)
        self.graph: FlowGraph | None = None
        self.acknowledged: str | None = None  # the hash the last `reload` verb reported
        self.listeners: dict[Any, Listener] = {}
        self.retired: list[Listener] = []
        self.last_reload: dict = {"time": None, "result": None, "error": None}
        self.stopped = Event()
        self.exit_code = 0
        self._reload_lock = Semaphore()
        self._inherited: dict[tuple, Any] = {}
        self.watcher: Watcher | None = None
        self.management: Any = None
        self.draining = False

    # -- boot ----------------------------------------------------------------------------------

    def compile(self, config_dir: str | None = None) -> FlowGraph:
        return compile_dir(config_dir or self.config_dir, settings=self.settings)

    def compile_off_hub(self, config_dir: str | None = None) -> FlowGraph:
        """``compile`` in a worker thread: reading and compiling a large config must not stall
        the connections the hub is serving meanwhile (they share the GIL, not the loop)."""
        return off_hub(self.compile, config_dir)

    def _prepare(self) -> FlowGraph:
        """Compile, and link unless the hash is the serving one's (runs off the hub: link
        reads certificates and compiles WASM modules; no plugin binds or spawns at link)."""
        graph = self.compile()
        if self.graph is None or graph.hash != self.graph.hash:
            self.link(graph)
        return graph

    def link(self, graph: FlowGraph) -> None:
        """Instantiate plugins; a failure (e.g. an unreadable certificate) is a CompileFailed
        naming the file and pointer of each node that caused it."""
        graph.link(LinkEnv(self.settings, graph.config_dir, self.services))

    def boot(self) -> None:
        """Compile, link and start serving. Raises CompileFailed on a broken config."""
        raise_nofile_limit()
        graph = self.compile()
        self.link(graph)
        self.graph = self.services.graph = graph
        self.services.configure_pool(graph.sources.config.get("upstream_pool"))
        self.acknowledged = graph.hash
        self.last_reload = {"time": time.time(), "result": "boot", "error": None}
        for sock in activated_sockets():
            key = socket_key(sock)
            if key is not None:
                self._inherited[key] = sock
        self._sync_listeners(graph)
        for key in self._inherited:
            log.warning("socket passed by systemd for %s %s:%s matches no listen address", *key)
        self._start_management()
        self.watcher = Watcher(self.config_dir, self._reload_quietly, self.settings.reload_debounce_ms)
        self.watcher.start()
        gevent.signal_handler(signal.SIGHUP, lambda: gevent.spawn(self._reload_quietly))
        gevent.signal_handler(signal.SIGTERM, lambda: gevent.spawn(self.drain))
        gevent.signal_handler(signal.SIGINT, lambda: gevent.spawn(self.close_now))
        if self.listeners:
            gevent.spawn(self._boot_health)
        gc.freeze()  # what boot built lives as long as the process: keep it out of every collection
        sdnotify.notify("READY=1")
        log.info("vaned %s serving graph %s (%d listeners)", __version__, graph.hash[:12], len(self.listeners))

    def _start_management(self) -> None:
        from vane.mgmt.server_unix import AlreadyRunning
        from vane.mgmt.service import start_management
        try:
            self.management = start_management(self)
        except AlreadyRunning:
            raise
        except Exception as exc:  # noqa: BLE001 - the proxy serves even when management cannot start
            log.warning("management interface not started: %s (set VANE_MGMT_UNIX to a writable path)", exc)

    def _boot_health(self) -> None:
        events = [lst.bound for lst in self.listeners.values()]
        if not gevent.wait(events, count=1, timeout=self.settings.boot_health_timeout) and not self.draining:
            if not any(lst.state == "listening" for lst in self.listeners.values()):
                log.error("no listener could bind within %ss (VANE_BOOT_HEALTH_TIMEOUT_SECS); exiting",
                          self.settings.boot_health_timeout)
                self.exit_code = 1
                self.close_now()

    # -- listeners -----------------------------------------------------------------------------

    def _sync_listeners(self, graph: FlowGraph) -> tuple[list, list]:
        """Diff the listener set against ``graph``: stop the removed, start the added, and
        bind again the ones that gave up earlier (their port may be free by now)."""
        wanted = set(graph.listeners)
        added, removed = [], []
        for addr in sorted(set(self.listeners) - wanted):
            lst = self.listeners.pop(addr)
            lst.stop()
            removed.append(addr)
            self._retire(lst)
        self._retry_failed()
        for addr in sorted(wanted - set(self.listeners)):
            inherited = self._inherited.pop((addr.transport, addr.ip, addr.port), None)
            lst = Listener(addr, self._handle, self.settings, inherited,
                           max_udp_sessions=min(self.settings.sec_max_connections, 65536))
            self.listeners[addr] = lst
            lst.start()
            added.append(addr)
        return added, removed

    def _retry_failed(self) -> None:
        for lst in self.listeners.values():
            if lst.retry():
                log.info("listener %s: binding again", lst.addr, extra={"listener": str(lst.addr)})

    def _not_bound(self, settle: float = 1.0) -> list[dict]:
        """Listeners not accepting after their first bind attempt, for the reload answer."""
        for lst in self.listeners.values():
            lst.settle(settle)
        return [{"listener": str(lst.addr), "state": lst.state, "error": lst.last_error}
                for lst in self.listeners.values() if lst.state != "listening"]

    def _retire(self, lst: Listener) -> None:
        """A removed listener: in-flight connections finish on their graph, up to the drain budget."""
        self.retired.append(lst)

        def wait_then_abort() -> None:
            deadline = time.monotonic() + self.settings.drain_timeout
            while self.conns.of_listener(lst) and time.monotonic() < deadline:
                gevent.sleep(0.1)
            for rec in self.conns.of_listener(lst):
                rec.abort()
            if lst in self.retired:
                self.retired.remove(lst)

        gevent.spawn(wait_then_abort)

    # -- connections ---------------------------------------------------------------------------

    def _handle(self, listener: Listener, sock: Any, peer: tuple) -> None:
        """A listener's accept handler (one greenlet per connection or UDP session): admit it
        past the security floor and hand it to a ``Connection`` with the serving graph."""
        udp = listener.addr.transport == "udp"
        graph = self.graph
        plan = graph.listeners.get(listener.addr) if graph is not None else None
        if plan is None or self.draining or not self.services.floor.admit(peer[0]):
            if not udp:
                reset(sock)
            return
        admit(self.services, listener, sock, peer, plan)

    # -- reload --------------------------------------------------------------------------------

    def reload(self) -> dict:
        """The ``reload`` verb: compile and swap; raises CompileFailed.

        ``reloaded`` means the graph now serving differs from the one the previous ``reload``
        verb reported (or from boot) — also when the file watcher already loaded it a moment
        before — so ``vane reload`` after a config change says ``reloaded`` for Ansible and
        cron; ``unchanged`` means nothing changed since.
        """
        if self.draining:
            from vane.mgmt.protocol import UNAVAILABLE, MgmtError
            raise MgmtError(UNAVAILABLE, "vaned is shutting down; reload refused")
        result = self.reload_now()
        if result["status"] == "unchanged" and result["hash"] != self.acknowledged:
            result = {"status": "reloaded", "hash": result["hash"]}
        self.acknowledged = result["hash"]
        not_bound = self._not_bound()
        if not_bound:
            result["not_bound"] = not_bound
        return result

    def reload_now(self) -> dict:
        """Compile and swap (watcher, SIGHUP, verb); {"status", "hash"}; raises CompileFailed."""
        with self._reload_lock:
            sdnotify.notify("RELOADING=1")
            try:
                return self._reload()
            finally:
                sdnotify.notify("READY=1")

    def _reload(self) -> dict:
        now = time.time()
        try:
            graph = off_hub(self._prepare)
            if self.graph is not None and graph.hash == self.graph.hash:
                self.last_reload = {"time": now, "result": "unchanged", "error": None}
                self.metrics.reload("unchanged")
                self._retry_failed()
                return {"status": "unchanged", "hash": graph.hash}
        except CompileFailed as exc:
            self.last_reload = {"time": now, "result": "failed", "error": [e.to_dict() for e in exc.errors]}
            self.metrics.reload("failed")
            for err in exc.errors:
                log.warning("reload failed, the running configuration stays: %s", err)
            raise
        self.graph = self.services.graph = graph
        self.services.configure_pool(graph.sources.config.get("upstream_pool"))
        added, removed = self._sync_listeners(graph)
        self.last_reload = {"time": now, "result": "reloaded", "error": None}
        self.metrics.reload("reloaded")
        log.info("reloaded: graph %s (+%d -%d listeners)", graph.hash[:12], len(added), len(removed))
        return {"status": "reloaded", "hash": graph.hash}

    def _reload_quietly(self) -> None:
        if self.draining:  # SIGHUP after SIGTERM: no new listeners while shutting down
            log.info("reload ignored: vaned is shutting down")
            return
        try:
            self.reload_now()
        except CompileFailed:
            pass  # logged and kept in last_reload

    # -- stop ----------------------------------------------------------------------------------

    def drain(self) -> None:
        """SIGTERM: stop accepting everywhere, finish in-flight up to the budget, abort the rest."""
        if self.draining:
            return
        self.draining = True
        self.services.draining.set()
        sdnotify.notify("STOPPING=1")
        log.info("draining %d connection(s), up to %ss", len(self.conns), self.settings.drain_timeout)
        for lst in self.listeners.values():
            lst.stop()
        if self.watcher is not None:
            self.watcher.stop()
        self.services.parking.close_all()  # idle keep-alive connections end now
        deadline = time.monotonic() + self.settings.drain_timeout
        while len(self.conns) and time.monotonic() < deadline:
            gevent.sleep(0.05)
        left = list(self.conns)
        if left:
            log.warning("drain budget exhausted: aborting %d connection(s)", len(left))
            self._abort(left)
        self._finish()

    def close_now(self) -> None:
        """SIGINT: close every connection now."""
        self.draining = True
        self.services.draining.set()
        for lst in self.listeners.values():
            lst.stop()
        self._abort(list(self.conns))
        self._finish()

    @staticmethod
    def _abort(records: list[Connection]) -> None:
        """Kill connection greenlets and let them close their sockets (RST) before we go on:
        the process exits right after, and an unfinished close would look like a clean end."""
        for rec in records:
            if rec.parked is not None:
                rec.parked.close()
        greenlets = [rec.greenlet for rec in records if rec.greenlet is not None]
        if greenlets:
            gevent.killall(greenlets, block=True, timeout=1.0)

    def _finish(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        if self.management is not None:
            try:
                self.management.stop()
            except Exception:  # noqa: BLE001
                log.debug("management stop failed", exc_info=True)
        if self.services._pool is not None:
            self.services._pool.close()
        self.services.upstreams.close()
        self.flow_log.close()
        self.stopped.set()

    def run(self) -> int:
        self.stopped.wait()
        return self.exit_code

    # -- DaemonAPI (DESIGN.md §9) ----------------------------------------------------------------

    def stats(self) -> dict:
        states: dict[str, int] = {}
        for lst in self.listeners.values():
            states[lst.state] = states.get(lst.state, 0) + 1
        return {
            "uptime_secs": round(time.time() - self.started, 3), "version": __version__, "pid": os.getpid(),
            "graph_hash": self.graph.hash if self.graph else None, "last_reload": self.last_reload,
            "listeners": states, "connections": {"active": len(self.conns), "total": self.conns.total},
            "draining": self.draining, "config_dir": self.config_dir,
        }

    def shutdown(self) -> None:
        gevent.spawn(self.drain)

    def compile_dry_run(self, dir: str) -> dict:
        graph = self.compile_off_hub(dir or self.config_dir)
        data = graph.to_json()
        return {"hash": graph.hash, "listeners": [str(a) for a in graph.listeners], "trees": data["listeners"]}

    def get_config(self) -> dict:
        graph = self.graph
        return {"hash": graph.hash, "config_dir": graph.config_dir, "config": graph.sources.config,
                "rules": [{"file": r.file, "pointer": r.pointer, "rule": r.rule} for r in graph.sources.rules],
                "trees": graph.to_json()["listeners"]}

    def get_listeners(self) -> list[dict]:
        out = []
        for lst in list(self.listeners.values()) + self.retired:
            d = lst.to_dict()
            d["connections"] = len(self.conns.of_listener(lst))
            if lst in self.retired:
                d["state"] = "draining"
            out.append(d)
        return out

    def get_connections(self) -> list[dict]:
        return [rec.to_dict() for rec in self.conns]

    def get_plugins(self) -> list[dict]:
        graph = self.graph
        out = []
        breakers: dict[str, dict] = {}
        for node in graph.nodes():
            if node.external and node.impl is not None and hasattr(node.impl, "breaker"):
                breakers[node.plugin] = node.impl.breaker.to_dict()
        for spec in graph.registry.externals():
            out.append({"name": spec.name, "driver": spec.driver, "branches": list(spec.branches),
                        "target": spec.options.get(spec.driver),
                        "breaker": breakers.get(spec.name, {"state": "unused"})})
        return out

    def get_upstreams(self) -> list[dict]:
        pool = self.services._pool
        return pool.snapshot() if pool is not None else []

    def get_upstream_groups(self) -> list[dict]:
        return self.services.upstreams.snapshot()

    def set_upstream(self, group: str, backend: str, action: str) -> dict:
        return self.services.upstreams.set_state(group, backend, action)

    def get_certs(self) -> list[dict]:
        graph = self.graph
        out = []
        for node in graph.nodes():
            if node.plugin == "upgrade" and node.impl is not None and getattr(node.impl, "tls", None):
                listeners = [str(a) for a, p in graph.listeners.items() if node in p.root.walk()]
                for info in node.impl.tls.certs_info():
                    out.append({**info, "listeners": listeners})
        return out

    def set_flow_log(self, level: str) -> dict:
        self.flow_log.level = level
        return {"level": level}
