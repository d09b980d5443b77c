"""The serving core of one process (DESIGN.md §7): graph, listeners, connections, drain.

``vaned`` in one process runs one ``Server``; with workers, each worker runs one and the
master runs none. A ``Server`` that ``binds`` opens its listeners itself (with the retry and
backoff rules of ``Listener``, or from sockets systemd passed); a worker's server is handed
each listening socket by the master (``attach``) and only accepts on it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import gevent

from vane.compile import FlowGraph
from vane.flow.connection import Connection, admit
from vane.net.listeners import Listener
from vane.net.plain import PlainStream
from vane.net.proxy_protocol import ProxyProtocolError, accept_proxied
from vane.net.sockets import reset

from .services import Services

log = logging.getLogger("vane.daemon")


class Server:
    """Owns the graph serving now, the listeners accepting for it and their retirement; the
    connection table and the rest of the daemon-scoped state are the ``services``'."""

    def __init__(self, services: Services, binds: bool = True, inherited: dict | None = None) -> None:
        self.services = services
        self.settings = services.settings
        self.conns = services.conns
        self.binds = binds
        self.inherited = inherited if inherited is not None else {}   # (transport, ip, port) -> socket
        self.graph: FlowGraph | None = None
        self.listeners: dict[Any, Listener] = {}
        self.retired: list[Listener] = []
        self.draining = False

    # -- graph ---------------------------------------------------------------------------------

    def swap(self, graph: FlowGraph) -> tuple[list, list]:
        """Serve ``graph`` from now on (connections keep theirs); diff the listener set."""
        self.graph = self.services.graph = graph
        self.services.configure_pool(graph.sources.config.get("upstream_pool"))
        return self.sync_listeners(graph)

    # -- listeners -----------------------------------------------------------------------------

    def sync_listeners(self, graph: FlowGraph) -> tuple[list, list]:
        """Stop the listeners ``graph`` no longer has, start the ones it adds (a worker's wait
        for their socket from the master), and bind again the ones that gave up earlier."""
        wanted = set(graph.listeners)
        added, removed = [], []
        for addr in sorted(set(self.listeners) - wanted):
            lst = self.listeners.pop(addr)
            lst.stop()
            removed.append(addr)
            self._retire(lst)
        if not self.binds:
            return added, removed
        self.retry_failed()
        for addr in sorted(wanted - set(self.listeners)):
            inherited = self.inherited.pop((addr.transport, addr.ip, addr.port), None)
            lst = Listener(addr, self.handle, self.settings, inherited,
                           max_udp_sessions=min(self.settings.sec_max_connections, 65536))
            self.listeners[addr] = lst
            lst.start()
            added.append(addr)
        return added, removed

    def attach(self, addr: Any, sock: Any, steer: tuple[int, int] | None = None) -> None:
        """A worker: accept on ``sock``, the master's bound socket for ``addr`` (``steer``: see
        ``ConnectionIds.steer``)."""
        old = self.listeners.pop(addr, None)
        if old is not None:
            old.stop()
        floor = self.services.floor
        lst = Listener(addr, self.handle, self.settings, sock,
                       max_udp_sessions=min(self.settings.sec_max_connections, 65536), announce=False,
                       crowded=floor.crowded if floor.shared is not None else None)
        lst.ids.steer = steer
        self.listeners[addr] = lst
        if self.draining:
            lst.stop()
            return
        lst.start()

    def steer(self, addr: Any, steer: tuple[int, int]) -> None:
        """A worker: see ``ConnectionIds.steer``."""
        lst = self.listeners.get(addr)
        if lst is not None:
            lst.ids.steer = steer

    def detach(self, addr: Any) -> None:
        lst = self.listeners.pop(addr, None)
        if lst is not None:
            lst.stop()
            self._retire(lst)

    def retry_failed(self) -> None:
        for lst in self.listeners.values():
            if lst.retry():
                log.info("listener %s: binding again", lst.addr, extra={"listener": str(lst.addr)})

    def not_bound(self, settle: float = 1.0) -> list[dict]:
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

    def handle(self, listener: Listener, sock: Any, peer: tuple) -> None:
        """A listener's accept handler (one greenlet per connection or UDP session): admit it
        past the security floor and hand it to a ``Connection`` with the serving graph."""
        graph = self.graph
        plan = graph.listeners.get(listener.addr) if graph is not None else None
        if plan is not None and plan.proxy_protocol is not None and not self.draining:
            stream = PlainStream(sock)  # the header is read with blocking, timed calls
            try:                 # the client behind a trusted load balancer: from here on it is the peer
                peer = accept_proxied(stream, peer, plan.proxy_protocol, self.settings.sec_handshake_timeout)
            except ProxyProtocolError as exc:
                self.services.floor.hit("proxy_protocol", peer[0], f"listener {listener.addr}: connection from "
                                                                   f"%s refused: {exc}")
                stream.abort()
                return
            sock = stream.detach()
        if plan is None or self.draining or not self.services.floor.admit(peer[0]):
            if listener.addr.transport != "udp":
                reset(sock)
            return
        admit(self.services, listener, sock, peer, plan)

    # -- stop ----------------------------------------------------------------------------------

    def stop_accepting(self) -> None:
        self.draining = True
        self.services.draining.set()
        for lst in self.listeners.values():
            lst.stop()

    def drain(self) -> None:
        """Stop accepting everywhere, finish in-flight up to the budget, abort the rest."""
        self.stop_accepting()
        log.info("draining %d connection(s), up to %ss", len(self.conns), self.settings.drain_timeout)
        self.services.parking.close_all()  # idle keep-alive connections end now
        deadline = time.monotonic() + self.settings.drain_timeout
        while len(self.conns) and time.monotonic() < deadline:
            gevent.sleep(0.05)
        left = list(self.conns)
        if left:
            log.warning("drain budget exhausted: aborting %d connection(s)", len(left))
            self.abort(left)

    def close_now(self) -> None:
        self.stop_accepting()
        self.abort(list(self.conns))

    @staticmethod
    def abort(records: list[Connection]) -> None:
        """Kill connection greenlets and let them close their sockets (RST) before we go on:
        the process exits right after, and an unfinished close would look like a clean end."""
        for rec in records:
            if rec.parked is not None:
                rec.parked.close()
        greenlets = [rec.greenlet for rec in records if rec.greenlet is not None]
        if greenlets:
            gevent.killall(greenlets, block=True, timeout=1.0)

    # -- state for management ------------------------------------------------------------------

    def listener_states(self) -> dict[str, int]:
        states: dict[str, int] = {}
        for lst in self.listeners.values():
            states[lst.state] = states.get(lst.state, 0) + 1
        return states

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

    def get_upstreams(self) -> list[dict]:
        pool = self.services._pool
        return pool.snapshot() if pool is not None else []

    def breakers(self) -> dict[str, dict]:
        """External plugins' circuit breakers of the serving graph, by plugin name."""
        out: dict[str, dict] = {}
        if self.graph is not None:
            for node in self.graph.nodes():
                if node.external and node.impl is not None and hasattr(node.impl, "breaker"):
                    out[node.plugin] = node.impl.breaker.to_dict()
        return out
