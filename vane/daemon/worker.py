"""One worker process of a master (forked by the spawner): it serves connections and answers
the master's calls over its channel.

The worker starts with the boot graph it inherited and accepts on the sockets the master
sends it (``listen``). A reload reaches it in two steps: ``prepare`` links the graph the master
compiled (its pickle, before linking) and keeps it aside; ``commit`` swaps it in, on every
worker, only once all of them prepared it. The worker never binds, compiles, watches files or
talks to systemd. When the master goes away (its end of the channel closes) the worker drains
and exits; SIGTERM drains, SIGINT closes at once, SIGHUP is the master's.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import socket
import time
from typing import Any

import gevent
from gevent.event import Event

from vane.compile import FlowGraph
from vane.config.errors import CompileFailed
from vane.engine.plugin import LinkEnv
from vane.observe.hub import Subscription

from .channel import CallFailed, Channel, ChannelClosed, Peer
from .server import Server
from .services import Services, off_hub

log = logging.getLogger("vane.daemon")

FORWARD_BATCH = 256      # flow-log entries or log records per event to the master
FORWARD_QUEUE = 2000     # what a worker buffers per stream before it counts drops


class WorkerTag(logging.Filter):
    """Adds ``worker=<n>`` to every record a worker logs."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


class Worker:
    """Owns this process's ``Server``, the channel to the master, the graphs prepared but not
    yet committed, and the streams forwarded to the master."""

    def __init__(self, services: Services, log_hub: Any, graph: FlowGraph, index: int, generation: int,
                 sock: socket.socket) -> None:
        self.services = services
        self.settings = services.settings
        self.log_hub = log_hub
        self.index = index
        self.generation = generation
        self.started = time.time()
        self.server = Server(services, binds=False)
        self.boot_graph = graph
        self.pending: dict[str, FlowGraph] = {}
        self.forwarders: dict[str, gevent.Greenlet] = {}
        self.stopping = False
        self.done = Event()
        self.peer = Peer(Channel(sock), {
            "prepare": self.prepare, "commit": self.commit, "abort": self.abort,
            "listen": self.listen, "unlisten": self.unlisten, "steer": self.steer,
            "stats": self.stats, "connections": self.server.get_connections,
            "listeners": self.server.get_listeners, "upstreams": self.server.get_upstreams,
            "breakers": self.server.breakers, "recent_flow": self.recent_flow,
            "upstream_groups": services.upstreams.snapshot, "set_upstream": self.set_upstream,
            "flush_metrics": self.flush_metrics, "forward": self.forward,
            "set_flow_log": self.set_flow_log, "drain": self.drain, "close_now": self.close_now,
            "reopen_logs": self.reopen_logs,
            "acme_challenge": self.acme_challenge, "acme_refresh": self.acme_refresh,
        }, on_close=self._master_gone, name=f"worker {index}")

    def run(self) -> int:
        os.environ.pop("NOTIFY_SOCKET", None)      # only the master speaks to systemd
        tag = WorkerTag(self.index)
        for handler in logging.getLogger().handlers:
            handler.addFilter(tag)
        self.services.floor.share(self.services.shared_limits, self.index)
        gevent.signal_handler(signal.SIGTERM, lambda: gevent.spawn(self.drain))
        gevent.signal_handler(signal.SIGINT, lambda: gevent.spawn(self.close_now))
        gevent.signal_handler(signal.SIGUSR1, lambda: gevent.spawn(self._reopen_quietly))
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self._open_access_log()
        self.server.swap(self.boot_graph)
        self.peer.start()
        self.peer.notify("ready", {"pid": os.getpid(), "hash": self.boot_graph.hash})
        self.done.wait()
        return 0

    # -- reload, in two steps --------------------------------------------------------------------

    def prepare(self, blob: bytes) -> dict:
        """Unpickle and link the master's graph, off the hub; {"hash"} or {"errors"}."""
        try:
            graph = off_hub(self._link, blob)
        except CompileFailed as exc:
            return {"errors": [e.to_dict() for e in exc.errors]}
        self.pending = {graph.hash: graph}
        return {"hash": graph.hash}

    def _link(self, blob: bytes) -> FlowGraph:
        graph: FlowGraph = pickle.loads(blob)
        graph.link(LinkEnv(self.settings, graph.config_dir, self.services))
        return graph

    def commit(self, hash: str) -> dict:
        graph = self.pending.pop(hash, None)
        if graph is None:
            if self.server.graph is not None and self.server.graph.hash == hash:
                return {"hash": hash}
            raise ValueError(f"graph {hash[:12]} was not prepared")
        self.pending.clear()
        self.server.swap(graph)
        return {"hash": hash}

    def abort(self, hash: str) -> dict:
        self.pending.pop(hash, None)
        return {}

    # -- listeners -------------------------------------------------------------------------------

    def listen(self, addr: Any, fds: list[int] | None = None, steer: list[int] | None = None) -> dict:
        """Accept on the master's socket for ``addr``; ``steer`` [worker, workers]: the kernel
        hands this worker the QUIC datagrams whose connection ID names it."""
        (fd,) = fds or (None,)
        if fd is None:
            raise ValueError("listen without a socket")
        self.server.attach(addr, socket.socket(fileno=fd), tuple(steer) if steer else None)
        return {}

    def steer(self, addr: Any, steer: list[int]) -> dict:
        """The port of ``addr`` now serves HTTP/3 (a reload): issue IDs that name this worker."""
        self.server.steer(addr, (steer[0], steer[1]))
        return {}

    def unlisten(self, addr: Any) -> dict:
        self.server.detach(addr)
        return {}

    # -- state for the master ----------------------------------------------------------------------

    def stats(self) -> dict:
        server, conns = self.server, self.services.conns
        return {"index": self.index, "pid": os.getpid(), "generation": self.generation,
                "graph_hash": server.graph.hash if server.graph is not None else None,
                "uptime_secs": round(time.time() - self.started, 3),
                "connections": len(conns), "connections_total": conns.total,
                "requests": self.services.metrics.requests_seen,
                "listeners": {lst.label: {"accepted": lst.accepted, "connections": len(conns.of_listener(lst))}
                              for lst in server.listeners.values()},
                "floor_hits": dict(self.services.floor.hits), "rss_bytes": rss_bytes(),
                "access_log": self.services.access_log.stats() if self.services.access_log else None,
                "draining": server.draining}

    def set_upstream(self, group: str, backend: str, action: str) -> dict:
        try:
            return self.services.upstreams.set_state(group, backend, action)
        except LookupError as exc:      # the operator named what this graph has not: an answer
            raise CallFailed("not_found", str(exc)) from None

    # -- the access log ----------------------------------------------------------------------------

    def _open_access_log(self) -> None:
        """Open the access log afresh: the descriptor boot opened may name a file logrotate
        has moved since (a worker replaced later)."""
        access = self.services.access_log
        if access is None:
            return
        try:
            access.open()
        except OSError as exc:
            log.error("cannot open the access log %s: %s; its lines are dropped until `vane reopen-logs` "
                      "succeeds", access.dest, exc)

    def reopen_logs(self) -> dict:
        access = self.services.access_log
        if access is None:
            return {"access_log": None, "reopened": False}
        if access.fd is None:
            access.open()
            return {"access_log": access.dest, "reopened": True}
        return access.reopen()

    def _reopen_quietly(self) -> None:
        try:
            self.reopen_logs()
        except OSError as exc:
            log.error("cannot reopen the access log: %s; it goes on in the old file", exc)

    def acme_challenge(self, kind: str, key: str, key_authorization: str | None) -> dict:
        """The master's ACME order put up (or took down) a challenge answer: answer it here too."""
        self.services.acme_challenges.apply(kind, key, key_authorization)
        return {}

    def acme_refresh(self, names: list[str] | None = None) -> dict:
        """The master stored a certificate: serve it from the state dir (all of them with None)."""
        acme = self.services.acme
        return {"refreshed": acme.refresh_all() if names is None else int(acme.refresh(tuple(names)))}

    def recent_flow(self, n: int) -> list[dict]:
        return self.services.flow_log.recent(n)

    def flush_metrics(self) -> dict:
        self.services.metrics.flush()
        return {}

    def set_flow_log(self, level: str) -> dict:
        self.services.flow_log.level = level
        return {"level": level}

    def forward(self, stream: str, on: bool) -> dict:
        """Start or stop sending ``stream`` ("flow" or "log") to the master."""
        running = self.forwarders.pop(stream, None)
        if running is not None:
            running.kill(block=False)
        if on:
            source = self.services.flow_log if stream == "flow" else self.log_hub
            self.forwarders[stream] = gevent.spawn(self._forward, stream, source.subscribe(FORWARD_QUEUE))
        return {}

    def _forward(self, stream: str, sub: Subscription) -> None:
        try:
            while True:
                item = sub.get(timeout=None)
                batch = [item]
                while len(batch) < FORWARD_BATCH and len(sub):
                    batch.append(sub.get(timeout=0))
                self.peer.notify(stream, batch)
        except ChannelClosed:
            pass
        except Exception:  # noqa: BLE001 - the stream ends; serving goes on
            log.exception("forwarding %s to the master failed", stream)
        finally:
            sub.close()

    # -- stop --------------------------------------------------------------------------------------

    def drain(self) -> dict:
        if not self.stopping:
            self.stopping = True
            gevent.spawn(self._stop, self.server.drain)
        return {}

    def close_now(self) -> dict:
        self.stopping = True
        gevent.spawn(self._stop, self.server.close_now)
        return {}

    def _stop(self, how: Any) -> None:
        try:
            how()
        finally:
            for g in self.forwarders.values():
                g.kill(block=False)
            self.services.close()
            self.services.flow_log.close()
            self.done.set()

    def _master_gone(self) -> None:
        if not self.stopping:
            log.warning("the master went away: draining")
            self.drain()


def rss_bytes(pid: int | str = "self") -> int | None:
    """Resident set size of a process, from /proc."""
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
