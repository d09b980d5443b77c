"""What steers a daemon, whatever its process model (DESIGN.md §7, §9): compiling, the reload
verb's contract, management, the file watcher, signals and systemd notifications.

``Daemon`` (one process) and ``Master`` (with workers) are both a ``Control``: they differ in
how a compiled graph reaches the connections (``_apply``) and in where the serving state is.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

import gevent
from gevent.event import Event
from gevent.lock import Semaphore

from vane.compile import FlowGraph, compile_dir
from vane.config.errors import CompileFailed, ConfigError
from vane.config.settings import Settings
from vane.engine.plugin import LinkEnv
from vane.mgmt.fds import raise_nofile_limit
from vane.observe.hub import Hub

from . import sdnotify
from .services import Services, off_hub
from .watcher import Watcher

log = logging.getLogger("vane.daemon")


class Control:
    """Owns the config dir, the graph last compiled and linked here, the reload bookkeeping
    (``last_reload``, the hash the last ``reload`` verb reported) and the management, watcher
    and signal plumbing."""

    services: Services
    listeners: dict[Any, Any]

    def __init__(self, config_dir: str, settings: Settings, log_hub: Hub | None = None) -> None:
        self.config_dir = os.path.abspath(config_dir)
        self.settings = settings
        self.started = time.time()
        self.log_hub = log_hub or Hub()
        self.graph: FlowGraph | None = None
        self.acknowledged: str | None = None  # the hash the last `reload` verb reported
        self.last_reload: dict = {"time": None, "result": None, "error": None}
        self.stopped = Event()
        self.exit_code = 0
        self.draining = False
        self.watcher: Watcher | None = None
        self.management: Any = None
        self._reload_lock = Semaphore()

    # -- compiling -----------------------------------------------------------------------------

    def compile(self, config_dir: str | None = None) -> FlowGraph:
        return compile_dir(config_dir or self.config_dir, settings=self.settings)

    def compile_off_hub(self, config_dir: str | None = None) -> FlowGraph:
        """``compile`` in a worker thread: reading and compiling a large config must not stall
        the connections the hub is serving meanwhile (they share the GIL, not the loop)."""
        return off_hub(self.compile, config_dir)

    def link(self, graph: FlowGraph) -> None:
        """Instantiate plugins; a failure (e.g. an unreadable certificate) is a CompileFailed
        naming the file and pointer of each node that caused it."""
        graph.link(LinkEnv(self.settings, graph.config_dir, self.services))

    def _prepare(self) -> FlowGraph:
        """Compile, and link unless the hash is the serving one's (runs off the hub: link
        reads certificates and compiles WASM modules; no plugin binds or spawns at link)."""
        graph = self.compile()
        if self.graph is None or graph.hash != self.graph.hash:
            self.link(graph)
        return graph

    # -- starting ------------------------------------------------------------------------------

    def _boot_graph(self) -> FlowGraph:
        """Boot's compile and link (on the main greenlet: nothing serves yet). Raises
        CompileFailed on a broken config."""
        raise_nofile_limit()
        graph = self.compile()
        self.link(graph)
        self.open_access_log()
        self.graph = graph
        self.acknowledged = graph.hash
        self.last_reload = {"time": time.time(), "result": "boot", "error": None}
        return graph

    def open_access_log(self, check_only: bool = False) -> None:
        """Open VANE_ACCESS_LOG (when set; with ``check_only``, see that it could be opened,
        creating nothing); an unwritable path is a CompileFailed naming it."""
        access = self.services.access_log
        if access is None:
            return
        try:
            access.check() if check_only else access.open()
        except OSError as exc:
            raise CompileFailed([ConfigError(".env", "", f"VANE_ACCESS_LOG: cannot open {access.dest} for "
                                             f"appending: {exc.strerror or exc}")]) from None

    def reopen_logs(self) -> dict:
        """SIGUSR1 and the ``reopen_logs`` verb: open VANE_ACCESS_LOG again (after logrotate
        moved it). Raises OSError when it cannot be opened; the old file stays in use."""
        access = self.services.access_log
        if access is None:
            return {"access_log": None, "reopened": False}
        return access.reopen()

    def _reopen_quietly(self) -> None:
        try:
            result = self.reopen_logs()
        except OSError as exc:
            log.error("cannot reopen the access log: %s; it goes on in the old file", exc)
            return
        if result.get("reopened"):
            log.info("access log reopened: %s", result["access_log"])

    def _boot_health(self) -> None:
        """Exit non-zero if no listener binds within VANE_BOOT_HEALTH_TIMEOUT_SECS."""
        listeners = self.listeners.values()
        if not gevent.wait([lst.bound for lst in listeners], count=1,
                           timeout=self.settings.boot_health_timeout) and not self.draining:
            if not any(lst.state == "listening" for lst in listeners):
                log.error("no listener could bind within %ss (VANE_BOOT_HEALTH_TIMEOUT_SECS); exiting",
                          self.settings.boot_health_timeout)
                self.exit_code = 1
                self.close_now()

    def _start_management(self) -> None:
        from vane.mgmt.server_unix import AlreadyRunning
        from vane.mgmt.service import start_management
        try:
            self.management = start_management(self)
        except AlreadyRunning:
            raise
        except Exception as exc:  # noqa: BLE001 - the proxy serves even when management cannot start
            log.warning("management interface not started: %s (set VANE_MGMT_UNIX to a writable path)", exc)

    def _start_watching(self) -> None:
        self.watcher = Watcher(self.config_dir, self._reload_quietly, self.settings.reload_debounce_ms)
        self.watcher.start()
        gevent.signal_handler(signal.SIGHUP, lambda: gevent.spawn(self._reload_quietly))
        gevent.signal_handler(signal.SIGUSR1, lambda: gevent.spawn(self._reopen_quietly))
        gevent.signal_handler(signal.SIGTERM, lambda: gevent.spawn(self.drain))
        gevent.signal_handler(signal.SIGINT, lambda: gevent.spawn(self.close_now))

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
                self.services.metrics.reload("unchanged")
                self._unchanged()
                return {"status": "unchanged", "hash": graph.hash}
            added, removed = self._apply(graph)
        except CompileFailed as exc:
            self.last_reload = {"time": now, "result": "failed", "error": [e.to_dict() for e in exc.errors]}
            self.services.metrics.reload("failed")
            for err in exc.errors:
                log.warning("reload failed, the running configuration stays: %s", err)
            raise
        self.graph = graph
        self._acme(graph)
        self.last_reload = {"time": now, "result": "reloaded", "error": None}
        self.services.metrics.reload("reloaded")
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

    def _apply(self, graph: FlowGraph) -> tuple[list, list]:
        """Make the connections use ``graph``; (added, removed) listen addresses. Raises
        CompileFailed to refuse it (nothing changed then)."""
        raise NotImplementedError

    def _unchanged(self) -> None:
        """A reload found the serving graph: listeners that gave up may bind again."""

    def _acme(self, graph: FlowGraph) -> None:
        """The graph now serving: issue and renew the ACME certificates it names (in the background)."""
        if graph.acme is not None or self.services._acme is not None:
            self.services.acme.want(graph.acme)

    def _not_bound(self) -> list[dict]:
        return []

    # -- stop ----------------------------------------------------------------------------------

    def drain(self) -> None:
        raise NotImplementedError

    def close_now(self) -> None:
        raise NotImplementedError

    def _stop_control(self) -> None:
        """The end: the watcher, management and the flow log file close."""
        if self.watcher is not None:
            self.watcher.stop()
        if self.management is not None:
            try:
                self.management.stop()
            except Exception:  # noqa: BLE001
                log.debug("management stop failed", exc_info=True)
        self.services.close()
        self.services.flow_log.close()
        self.stopped.set()

    def run(self) -> int:
        self.stopped.wait()
        return self.exit_code

    # -- DaemonAPI (DESIGN.md §9): the graph's side ----------------------------------------------

    @property
    def flow_log(self) -> Any:
        return self.services.flow_log

    @property
    def metrics(self) -> Any:
        return self.services.metrics

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

    def _plugins(self, breakers: dict[str, dict]) -> list[dict]:
        return [{"name": spec.name, "driver": spec.driver, "branches": list(spec.branches),
                 "target": spec.options.get(spec.driver), "breaker": breakers.get(spec.name, {"state": "unused"})}
                for spec in self.graph.registry.externals()]

    def cert_rows(self) -> list[dict]:
        """``get_certs``, or none before the first graph is linked (the metrics collector)."""
        return self.get_certs() if self.graph is not None else []

    def get_certs(self) -> list[dict]:
        graph = self.graph
        out = []
        for node in graph.nodes():
            if node.plugin == "upgrade" and node.impl is not None and getattr(node.impl, "tls", None):
                listeners = [str(a) for a, p in graph.listeners.items() if node in p.root.walk()]
                for info in node.impl.tls.certs_info():
                    out.append({**info, "listeners": listeners})
        return out
