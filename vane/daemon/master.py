"""vaned with workers (``VANE_WORKERS`` above 1): a supervising master and N worker processes.

The master compiles and links the config, owns the listening sockets (it binds them with the
listener rules of DESIGN.md §7, or takes them from systemd), watches the config, serves
management and speaks to systemd; it serves no connection itself. Workers are forked by the
spawner (``spawner.py``) from the state boot left, accept on the master's sockets and run the
flows (``worker.py``).

- **Reload**: the master compiles and links once (a failure touches no worker); each worker
  then links the same compiled graph and sets it aside (``prepare``); only when every worker
  has, all of them swap it in (``commit``), and the verb answers after that. The listener set
  is diffed by the master; a socket it binds later reaches every worker.
- **Supervision**: a worker that exits is logged with its status and replaced, sooner or
  later with a backoff when it keeps dying young; its share of the shared limits and its live
  metric gauges are cleared first.
- **One daemon to management**: stats, connections, upstreams and metrics sum or list the
  workers; ``tail_flow`` and ``tail_log`` merge their streams while someone reads.
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import shutil
import tempfile
import time
from typing import Any

import gevent
from gevent.event import Event

from vane import __version__
from vane.compile import FlowGraph
from vane.config.errors import CompileFailed, ConfigError
from vane.config.settings import Settings
from vane.flow.connection import ConnTable
from vane.net.listeners import Listener
from vane.net.upstream.registry import upstream_families
from vane.observe.certmetrics import CertMetrics
from vane.observe.flowlog import FlowLog
from vane.observe.hub import Hub, Subscription
from vane.observe.metrics import Metrics, enable_multiprocess, mark_process_dead

from . import sdnotify
from .channel import Channel, ChannelClosed, Peer, pair
from .control import Control
from .daemon import inherited_sockets
from .services import Services
from .shm import SharedLimits
from .spawner import Spawner, describe_status
from .worker import Worker, rss_bytes

log = logging.getLogger("vane.daemon")

CALL_TIMEOUT = 5.0         # a worker's answer to a management question
PREPARE_TIMEOUT = 120.0    # linking a graph: certificates, WASM modules
READY_TIMEOUT = 30.0       # a new worker's first word
YOUNG = 5.0                # a worker that dies younger than this was "dying young"
BACKOFF_MAX = 30.0


def _sum_counts(into: dict | None, row: dict) -> dict:
    """``row``'s numbers added to ``into``'s (the other fields taken from the first row)."""
    if into is None:
        return dict(row)
    for key, value in row.items():
        if isinstance(value, int) and not isinstance(value, bool):
            into[key] = into.get(key, 0) + value
    return into


class WorkerSlot:
    """The master's record of worker number ``index``: its current process and channel, and
    what survives its restarts (the restart count, the totals of its past processes)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.pid = 0
        self.generation = 0
        self.peer: Peer | None = None
        self.state = "down"          # starting | serving | down
        self.started = 0.0
        self.restarts = 0
        self.young_deaths = 0
        self.ready = Event()
        self.gone = Event()
        self.gone.set()
        self.last_stats: dict = {}
        self.past_connections = 0    # totals of this slot's processes that exited
        self.past_requests = 0

    @property
    def serving(self) -> bool:
        return self.state == "serving" and self.peer is not None and not self.peer.closed


class MergedFlowLog:
    """The flow log management sees: the workers' entries, live and recent."""

    def __init__(self, master: Master) -> None:
        self.master = master
        self.hub = Hub()
        self.hub.on_readers = lambda on: master.forward("flow", on)

    def subscribe(self, maxsize: int = 1000) -> Subscription:
        return self.hub.subscribe(maxsize)

    @property
    def subscribers(self) -> int:
        return self.hub.subscribers

    def recent(self, n: int = 100) -> list[dict]:
        entries: list[dict] = []
        for rows in self.master.ask_all("recent_flow", n=n).values():
            if isinstance(rows, list):
                entries.extend(rows)
        entries.sort(key=lambda e: e.get("ts", 0.0))
        return entries[-n:] if n > 0 else []

    @property
    def level(self) -> str:
        return self.master.services.flow_log.level


class MergedMetrics:
    """The metrics management sees: every process's values summed (prometheus_client's
    multiprocess mode), after the workers folded in what they batched."""

    def __init__(self, master: Master, metrics: Metrics) -> None:
        self.master = master
        self.inner = metrics

    def render_prometheus(self) -> bytes:
        self.master.ask_all("flush_metrics")
        return self.inner.render_prometheus()

    def as_json(self) -> dict:
        self.master.ask_all("flush_metrics")
        return self.inner.as_json()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _UpstreamMetrics:
    """The upstream metric families of the workers' merged rows (a custom collector: these
    values live in each worker's groups, not in the multiprocess files)."""

    def __init__(self, master: Master) -> None:
        self.master = master

    def describe(self) -> list:
        return []

    def collect(self) -> Any:
        yield from upstream_families(self.master.get_upstream_groups())


class Master(Control):
    """Owns the workers (their slots and the spawner), the listening sockets, the shared
    limits and the multiprocess metrics directory; steers like a ``Daemon``."""

    def __init__(self, config_dir: str, settings: Settings, log_hub: Hub | None = None) -> None:
        super().__init__(config_dir, settings, log_hub)
        self.metrics_dir = tempfile.mkdtemp(prefix="vaned-metrics-")
        enable_multiprocess(self.metrics_dir)
        self.services = Services(settings, Metrics(), FlowLog(file_path=settings.flow_log_file), ConnTable())
        self.limits = SharedLimits(settings.workers, settings.sec_max_connections)
        self.services.shared_limits = self.limits
        self.services.metrics.aggregate(self.metrics_dir)
        self.services.metrics.expose(_UpstreamMetrics(self))
        self.services.metrics.expose(CertMetrics(self.cert_rows))
        self.slots = [WorkerSlot(i) for i in range(settings.workers)]
        self.listeners: dict[Any, Listener] = {}
        self.spawner: Spawner | None = None
        self.blob: bytes | None = None            # the serving graph, compiled, before linking
        self._prepared: tuple[str, bytes] = ("", b"")
        self._inherited: dict[tuple, Any] = {}
        self.merged_flow = MergedFlowLog(self)
        self.merged_metrics = MergedMetrics(self, self.services.metrics)
        self.log_hub.on_readers = lambda on: self.forward("log", on)

    # -- boot ----------------------------------------------------------------------------------

    def boot(self) -> None:
        """Compile, link, fork the spawner, bind, start management, start the workers."""
        graph = self._boot_graph()
        if self.services.access_log is not None:
            self.services.access_log.close()   # checked; each worker opens its own
        gc.freeze()  # the boot graph and the libraries: shared copy-on-write with every worker
        self.spawner = Spawner(self._worker_main, self._exited, self._spawner_lost).start()
        self._inherited = inherited_sockets()
        self._sync_listeners(graph)
        for key in self._inherited:
            log.warning("socket passed by systemd for %s %s:%s matches no listen address", *key)
        self._start_management()
        self._start_watching()
        for slot in self.slots:
            gevent.spawn(self._start_worker, slot)
        if not gevent.wait([slot.ready for slot in self.slots], timeout=READY_TIMEOUT):
            log.warning("not every worker started within %ss", READY_TIMEOUT)
        self._acme(graph)  # the master alone talks to the CA, once workers can answer challenges
        if self.listeners:
            gevent.spawn(self._boot_health)
        sdnotify.notify(f"READY=1\nMAINPID={os.getpid()}")
        log.info("vaned %s serving graph %s (%d listeners, %d workers)", __version__, graph.hash[:12],
                 len(self.listeners), len(self.slots))

    def _worker_main(self, index: int, generation: int, sock: Any) -> None:
        """In a new worker process (forked by the spawner): serve until told to stop."""
        worker = Worker(self.services, self.log_hub, self.graph, index, generation, sock)
        os._exit(worker.run())

    # -- workers -------------------------------------------------------------------------------

    def _start_worker(self, slot: WorkerSlot) -> None:
        """Fork a process for ``slot``, bring it to the serving graph, hand it every socket."""
        if self.draining or self.spawner is None:
            return
        mine, theirs = pair()
        slot.generation += 1
        slot.state = "starting"
        slot.ready.clear()
        slot.gone.clear()
        slot.peer = Peer(Channel(mine), {}, on_event=lambda name, data: self._event(slot, name, data),
                         name=f"worker {slot.index}")
        slot.peer.start()
        try:
            slot.pid = self.spawner.spawn(slot.index, slot.generation, theirs)
        except (ChannelClosed, gevent.Timeout, Exception) as exc:  # noqa: BLE001 - logged, retried
            log.error("cannot start worker %d: %s", slot.index, exc)
            slot.peer.close()
            slot.state = "down"
            slot.gone.set()
            return
        slot.started = time.monotonic()
        if not slot.ready.wait(READY_TIMEOUT):
            log.error("worker %d (pid %d) did not start within %ss; killing it", slot.index, slot.pid, READY_TIMEOUT)
            self._kill(slot)
            return
        try:
            if self.blob is not None:                    # reloaded since boot: bring it up to date
                answer = slot.peer.call("prepare", PREPARE_TIMEOUT, blob=self.blob)
                if "errors" in answer:
                    raise CompileFailed([ConfigError(**e) for e in answer["errors"]])
                slot.peer.call("commit", CALL_TIMEOUT, hash=answer["hash"])
            if self.services._acme is not None:  # certificates issued since boot, challenges up now
                if self.services.acme.stored_sets():
                    slot.peer.call("acme_refresh", CALL_TIMEOUT)
                for kind, key, authz in self.services.acme_challenges.pending():
                    slot.peer.call("acme_challenge", CALL_TIMEOUT, kind=kind, key=key, key_authorization=authz)
            for lst in list(self.listeners.values()):
                if lst.state == "listening":
                    self._send_socket(slot, lst)
        except (CompileFailed, ChannelClosed, gevent.Timeout, Exception) as exc:  # noqa: BLE001
            log.error("worker %d (pid %d) could not take the serving graph: %s; killing it",
                      slot.index, slot.pid, exc)
            self._kill(slot)
            return
        slot.state = "serving"
        if self.draining:
            self._tell(slot, "drain")

    def _event(self, slot: WorkerSlot, name: str, data: Any) -> None:
        if name == "ready":
            slot.ready.set()
        elif name == "flow":
            publish, index = self.merged_flow.hub.publish, slot.index
            for item in data:
                item["worker"] = index
                publish(item)
        elif name == "log":
            publish = self.log_hub.publish
            for item in data:
                publish(item)

    def _exited(self, pid: int, status: int) -> None:
        """The spawner reaped ``pid``."""
        slot = next((s for s in self.slots if s.pid == pid), None)
        if slot is None:
            return
        lived = time.monotonic() - slot.started
        slot.past_connections += slot.last_stats.get("connections_total", 0)
        slot.past_requests += slot.last_stats.get("requests", 0)
        slot.last_stats = {}
        slot.state = "down"
        slot.pid = 0
        if slot.peer is not None:
            slot.peer.close()
        self.limits.conns.clear_worker(slot.index)
        mark_process_dead(pid, self.metrics_dir)
        slot.gone.set()
        if self.draining:
            return
        slot.restarts += 1
        slot.young_deaths = slot.young_deaths + 1 if lived < YOUNG else 0
        delay = min(BACKOFF_MAX, 0.1 * 2 ** (slot.young_deaths - 1)) if slot.young_deaths else 0.0
        log.warning("worker %d (pid %d) exited (%s) after %.1fs; starting a new one%s", slot.index, pid,
                    describe_status(status), lived, f" in {delay:.1f}s" if delay else "",
                    extra={"worker": slot.index})
        gevent.spawn_later(delay, self._start_worker, slot)

    def _spawner_lost(self) -> None:
        if not self.draining:
            log.error("the worker spawner (pid %d) exited: a worker that exits can no longer be replaced",
                      self.spawner.pid if self.spawner else 0)

    def _kill(self, slot: WorkerSlot) -> None:
        if slot.pid:
            try:
                os.kill(slot.pid, 9)
            except ProcessLookupError:
                pass

    def _tell(self, slot: WorkerSlot, op: str, **args: Any) -> Any:
        """``op`` on one worker; its exception is returned, not raised (it is logged by the
        caller if it matters)."""
        if slot.peer is None or slot.peer.closed:
            return ChannelClosed("worker is down")
        try:
            return slot.peer.call(op, args.pop("timeout", CALL_TIMEOUT), **args)
        except (ChannelClosed, gevent.Timeout, Exception) as exc:  # noqa: BLE001 - handed back
            return exc

    def ask_all(self, op: str, timeout: float = CALL_TIMEOUT, **args: Any) -> dict[WorkerSlot, Any]:
        """``op`` on every serving worker at once; each answer, or the exception in its place."""
        slots = [s for s in self.slots if s.serving]
        jobs = [gevent.spawn(self._tell, s, op, timeout=timeout, **args) for s in slots]
        gevent.joinall(jobs, timeout=timeout + 1.0)
        return {s: (j.value if j.successful() else gevent.Timeout()) for s, j in zip(slots, jobs, strict=True)}

    def forward(self, stream: str, on: bool) -> None:
        gevent.spawn(self.ask_all, "forward", stream=stream, on=on)

    # -- listeners -----------------------------------------------------------------------------

    def _sync_listeners(self, graph: FlowGraph) -> tuple[list, list]:
        wanted = set(graph.listeners)
        added, removed = [], []
        for addr in sorted(set(self.listeners) - wanted):
            self.listeners.pop(addr).stop()       # the workers stopped theirs when they committed
            removed.append(addr)
        self._retry_failed()
        for addr, lst in self.listeners.items():     # a kept UDP port that starts or stops serving HTTP/3
            quic = lst.quic = graph.listeners[addr].quic
            if lst.steered and not quic:
                lst.unsteer()
            elif quic and not lst.steered and lst.group_socks:
                for slot in self.slots:                 # first the workers' IDs, then the kernel's steering
                    if slot.serving:
                        self._tell(slot, "steer", addr=addr, steer=[slot.index, len(lst.group_socks)])
                lst.steer()
        for addr in sorted(wanted - set(self.listeners)):
            inherited = self._inherited.pop((addr.transport, addr.ip, addr.port), None)
            lst = Listener(addr, None, self.settings, inherited, group=len(self.slots),
                           quic=graph.listeners[addr].quic)
            self.listeners[addr] = lst
            lst.start()
            gevent.spawn(self._announce, lst)
            added.append(addr)
        return added, removed

    def _retry_failed(self) -> None:
        for lst in self.listeners.values():
            if lst.retry():
                log.info("listener %s: binding again", lst.addr, extra={"listener": str(lst.addr)})
                gevent.spawn(self._announce, lst)

    def _announce(self, lst: Listener) -> None:
        """Once ``lst`` is bound, every serving worker accepts on it."""
        lst.bound.wait()
        if lst.state != "listening" or self.listeners.get(lst.addr) is not lst:
            return
        for slot in self.slots:
            if slot.serving:
                self._send_socket(slot, lst)

    def _send_socket(self, slot: WorkerSlot, lst: Listener) -> None:
        sock = lst.socket_for(slot.index)
        if sock is None:
            return
        steer = [slot.index, len(lst.group_socks)] if lst.steered else None
        answer = self._tell(slot, "listen", addr=lst.addr, fds=[sock.fileno()], steer=steer)
        if isinstance(answer, BaseException):
            log.warning("worker %d did not take the socket of %s: %s", slot.index, lst.addr, answer)

    # -- reload --------------------------------------------------------------------------------

    def _prepare(self) -> FlowGraph:
        """Compile; keep the compiled graph's pickle for the workers; link here to check it."""
        graph = self.compile()
        if self.graph is None or graph.hash != self.graph.hash:
            self._prepared = (graph.hash, pickle.dumps(graph, protocol=pickle.HIGHEST_PROTOCOL))
            self.link(graph)
        return graph

    def _apply(self, graph: FlowGraph) -> tuple[list, list]:
        hash_, blob = self._prepared
        assert hash_ == graph.hash
        slots = [s for s in self.slots if s.serving]
        jobs = {s: gevent.spawn(self._tell, s, "prepare", blob=blob, timeout=PREPARE_TIMEOUT) for s in slots}
        gevent.joinall(list(jobs.values()))
        answers = {s: j.value for s, j in jobs.items()}
        errors: list[ConfigError] = []
        for slot, answer in answers.items():
            if isinstance(answer, BaseException):
                errors.append(ConfigError("", "", f"worker {slot.index} could not prepare the graph: {answer}"))
            elif "errors" in answer:
                errors.extend(ConfigError(**e) for e in answer["errors"])
            elif answer.get("hash") != graph.hash:
                errors.append(ConfigError("", "", f"worker {slot.index} linked graph {answer.get('hash')}"))
        if errors:
            for slot in slots:
                gevent.spawn(self._tell, slot, "abort", hash=graph.hash)
            raise CompileFailed(errors)
        self.blob = blob
        for slot in slots:
            answer = self._tell(slot, "commit", hash=graph.hash)
            if isinstance(answer, BaseException):   # it died since: its successor takes the new graph
                log.warning("worker %d did not switch to graph %s: %s", slot.index, graph.hash[:12], answer)
        return self._sync_listeners(graph)

    def _unchanged(self) -> None:
        self._retry_failed()

    def _acme(self, graph: FlowGraph) -> None:
        """The master alone talks to the CA; challenge answers and new certificates reach every
        worker before the CA is asked to validate, and after the certificate is stored."""
        if graph.acme is not None and self.services.acme.on_issued is None:
            self.services.acme_challenges.on_change = self._acme_challenge
            self.services.acme.on_issued = lambda names: self.ask_all("acme_refresh", names=list(names))
        super()._acme(graph)

    def _acme_challenge(self, kind: str, key: str, key_authorization: str | None) -> None:
        """Every worker that is up (also one still being brought to the serving graph) gets it."""
        slots = [s for s in self.slots if s.peer is not None and not s.peer.closed and s.ready.is_set()]
        jobs = [gevent.spawn(self._tell, s, "acme_challenge", kind=kind, key=key, key_authorization=key_authorization)
                for s in slots]
        gevent.joinall(jobs, timeout=CALL_TIMEOUT + 1.0)
        for slot, job in zip(slots, jobs, strict=True):
            if not job.successful() or isinstance(job.value, BaseException):
                log.warning("worker %d did not take an ACME challenge answer: %s", slot.index, job.value)

    def _not_bound(self, settle: float = 1.0) -> list[dict]:
        for lst in self.listeners.values():
            lst.settle(settle)
        return [{"listener": str(lst.addr), "state": lst.state, "error": lst.last_error}
                for lst in self.listeners.values() if lst.state != "listening"]

    # -- stop ----------------------------------------------------------------------------------

    def drain(self) -> None:
        """SIGTERM: every worker drains within the budget; then the master exits."""
        if self.draining:
            return
        self.draining = True
        sdnotify.notify("STOPPING=1")
        if self.watcher is not None:
            self.watcher.stop()
        log.info("draining %d worker(s), up to %ss", sum(1 for s in self.slots if s.pid), self.settings.drain_timeout)
        for lst in self.listeners.values():
            lst.stop()
        self.ask_all("drain")
        self._wait_workers(self.settings.drain_timeout + 5.0)
        self._finish()

    def close_now(self) -> None:
        """SIGINT: every worker closes its connections now."""
        self.draining = True
        for lst in self.listeners.values():
            lst.stop()
        self.ask_all("close_now", timeout=1.0)
        self._wait_workers(3.0)
        self._finish()

    def _wait_workers(self, budget: float) -> None:
        if not gevent.wait([s.gone for s in self.slots], timeout=budget):
            for slot in self.slots:
                if slot.pid:
                    log.warning("worker %d (pid %d) did not stop in time; killing it", slot.index, slot.pid)
                    self._kill(slot)
            gevent.wait([s.gone for s in self.slots], timeout=5.0)

    def _finish(self) -> None:
        if self.spawner is not None:
            self.spawner.stop()
        self._stop_control()
        shutil.rmtree(self.metrics_dir, ignore_errors=True)

    # -- DaemonAPI (DESIGN.md §9) ----------------------------------------------------------------

    @property
    def flow_log(self) -> Any:
        return self.merged_flow

    @property
    def metrics(self) -> Any:
        return self.merged_metrics

    def stats(self) -> dict:
        answers = self.ask_all("stats")
        workers, active, total, requests = [], 0, 0, 0
        access: dict | None = None
        floor_hits: dict[str, int] = {}
        for slot in self.slots:
            answer = answers.get(slot)
            if isinstance(answer, dict):
                slot.last_stats = answer
            st = slot.last_stats if isinstance(answer, dict) else {}
            conns = st.get("connections_total", 0) + slot.past_connections
            reqs = st.get("requests", 0) + slot.past_requests
            active += st.get("connections", 0)
            if isinstance(st.get("access_log"), dict):
                access = _sum_counts(access, st["access_log"])
            if isinstance(st.get("floor_hits"), dict):
                floor_hits = _sum_counts(floor_hits, st["floor_hits"])
            total += conns
            requests += reqs
            workers.append({"index": slot.index, "pid": slot.pid or None, "generation": slot.generation,
                            "state": slot.state if isinstance(answer, dict) or not slot.serving else "unresponsive",
                            "connections": st.get("connections", 0), "connections_total": conns,
                            "requests": reqs, "restarts": slot.restarts,
                            "uptime_secs": st.get("uptime_secs"), "graph_hash": st.get("graph_hash"),
                            "rss_bytes": st.get("rss_bytes")})
        states: dict[str, int] = {}
        for lst in self.listeners.values():
            states[lst.state] = states.get(lst.state, 0) + 1
        return {
            "uptime_secs": round(time.time() - self.started, 3), "version": __version__, "pid": os.getpid(),
            "graph_hash": self.graph.hash if self.graph else None, "last_reload": self.last_reload,
            "listeners": states, "connections": {"active": active, "total": total}, "requests": requests,
            "draining": self.draining, "config_dir": self.config_dir,
            "workers": workers, "master": {"rss_bytes": rss_bytes(),
                                           "spawner_pid": self.spawner.pid if self.spawner else None,
                                           "spawner_rss_bytes": rss_bytes(self.spawner.pid) if self.spawner else None},
            "shared_limits_bytes": self.limits.bytes, "access_log": access, "floor_hits": floor_hits,
        }

    def get_listeners(self) -> list[dict]:
        per_worker = [a.get("listeners", {}) for a in self.ask_all("stats").values() if isinstance(a, dict)]
        out = []
        for lst in self.listeners.values():
            d = lst.to_dict()
            d["accepted"] = sum(w.get(lst.label, {}).get("accepted", 0) for w in per_worker)
            d["connections"] = sum(w.get(lst.label, {}).get("connections", 0) for w in per_worker)
            out.append(d)
        return out

    def get_connections(self) -> list[dict]:
        out = []
        for slot, rows in self.ask_all("connections").items():
            if isinstance(rows, list):
                out.extend({**row, "worker": slot.index, "worker_pid": slot.pid} for row in rows)
        return out

    def get_upstreams(self) -> list[dict]:
        """One row per upstream with the workers' counts summed (limits are per worker)."""
        merged: dict[str, dict] = {}
        for rows in self.ask_all("upstreams").values():
            if not isinstance(rows, list):
                continue
            for row in rows:
                into = merged.get(row["upstream"])
                if into is None:
                    merged[row["upstream"]] = {**row, "workers": 1}
                    continue
                into["workers"] += 1
                for key, value in row.items():
                    if isinstance(value, int) and not isinstance(value, bool) and not key.startswith("max_"):
                        into[key] = into.get(key, 0) + value
        return list(merged.values())

    def get_plugins(self) -> list[dict]:
        order = {"open": 3, "half_open": 2, "closed": 1}
        worst: dict[str, dict] = {}
        for answer in self.ask_all("breakers").values():
            if isinstance(answer, dict):
                for name, breaker in answer.items():
                    if order.get(breaker.get("state"), 0) > order.get(worst.get(name, {}).get("state"), 0):
                        worst[name] = breaker
        return self._plugins(worst)

    def get_upstream_groups(self) -> list[dict]:
        """The workers' rows merged per backend. Each worker checks health itself: requests in
        flight, failures and check results are summed; a backend is up only if every worker
        sees it up; the rest (last check, latency, consecutive counts) is the first worker's."""
        merged: dict[tuple[str, str], dict] = {}
        for rows in self.ask_all("upstream_groups").values():
            if not isinstance(rows, list):
                continue
            for row in rows:
                into = merged.get((row["group"], row["backend"]))
                if into is None:
                    merged[(row["group"], row["backend"])] = {**row, "checks": dict(row["checks"])}
                    continue
                into["active"] += row["active"]
                into["failures"] += row["failures"]
                for result, n in row["checks"].items():
                    into["checks"][result] = into["checks"].get(result, 0) + n
                if into["state"] == "up" and row["state"] != "up":
                    into["state"] = row["state"]
        return list(merged.values())

    def set_upstream(self, group: str, backend: str, action: str) -> dict:
        """Every worker applies it; a group or backend no worker knows is a LookupError."""
        answers = list(self.ask_all("set_upstream", group=group, backend=backend, action=action).values())
        done = [a for a in answers if isinstance(a, dict)]
        if done:
            return done[0]
        failed = next((a for a in answers if isinstance(a, BaseException)), None)
        raise LookupError(str(failed) if failed is not None else "no worker is serving")

    def set_flow_log(self, level: str) -> dict:
        self.services.flow_log.level = level
        self.ask_all("set_flow_log", level=level)
        return {"level": level}

    def reopen_logs(self) -> dict:
        """Every worker opens the access log again; OSError naming those that could not."""
        access = self.services.access_log
        if access is None:
            return {"access_log": None, "reopened": False}
        answers = self.ask_all("reopen_logs")
        failed = [f"worker {slot.index}: {answer}" for slot, answer in answers.items()
                  if isinstance(answer, BaseException)]
        if failed:
            raise OSError(f"access log {access.dest} not reopened by " + "; ".join(failed))
        return {"access_log": access.dest, "reopened": True, "workers": len(answers)}
