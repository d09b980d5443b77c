"""One client connection from admission to close, and the daemon's table of them.

The daemon admits a connection (security floor, a graph to serve it) and hands it to
``Connection.serve``, which walks the listener's tree; an ``upgrade http`` there hands the
stream to the HTTP layer (``vane.flow.http``). Everything about the connection that outlives
one request lives here and nowhere else.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import gevent

from vane.engine.executor import walk
from vane.engine.ids import uuid7
from vane.engine.node import Node
from vane.engine.outcome import ServeHttp
from vane.net.plain import PlainStream
from vane.net.sockets import RawSocket, reset
from vane.net.tunnel import Counters
from vane.observe.flowlog import L4

from .l4context import L4Context


class Connection:
    """One accepted TCP connection or UDP session.

    Owns the client socket (or UDP session), its accounting (bytes both ways, requests
    served, the upstream it is relayed to, the context running now, for
    ``get_connections``), its entry in the daemon's ``ConnTable``, parking between
    keep-alive requests (no greenlet while it waits), and the finish: close, metrics and
    the L4 flow-log entry, exactly once.
    """

    __slots__ = ("id", "peer", "local", "listener", "proto", "started", "counters", "ctx", "greenlet",
                 "upstream", "requests", "parked", "services", "sock", "udp", "codec", "last_rule", "_finished")

    def __init__(self, services: Any, listener: Any, sock: Any, peer: tuple, local: tuple,
                 udp: Any = None) -> None:
        self.id = uuid7()
        self.services = services
        self.listener = listener        # the Listener (its label names it)
        self.sock = sock                # the accepted socket (see ``socket``); UDP: the listener's
        self.udp = udp                  # UDP: the session the listener feeds
        self.peer = peer
        self.local = local
        self.proto = listener.addr.transport
        self.started = time.monotonic()
        self.counters = Counters()
        self.ctx: Any = None            # the context running now (L4, or the current HTTP request)
        self.greenlet: Any = None
        self.upstream: str | None = None
        self.requests = 0
        self.parked: Any = None         # waiting between keep-alive requests without a greenlet
        self.codec: Any = None          # the HTTP codec serving now: bytes it moved, not yet in counters
        self.last_rule: str | None = None   # the rule of the last HTTP request, shown while idle
        self._finished = False
        if udp is not None:
            udp.counters = self.counters

    # -- serving ---------------------------------------------------------------------------------

    def serve(self, root: Node) -> None:
        """The connection greenlet: walk ``root``; an ``upgrade http`` goes on in the HTTP layer."""
        services = self.services
        settings = services.settings
        self.greenlet = gevent.getcurrent()
        ctx = L4Context(self, self.peer, self.local, self.listener.label, self.proto, services,
                        settings.sec_handshake_timeout, self.id,
                        datagram=self.udp.first if self.udp is not None else None)
        ctx.udp = self.udp
        if services.flow_log.debug:
            ctx.on_step = _on_step
        self.ctx = ctx
        services.conns.add(self)
        services.metrics.conn_opened(self.listener.label)
        outcome = "aborted"
        try:
            result = walk(root, ctx, settings.flow_execution_timeout)
            if result.__class__ is ServeHttp:
                from .http import serve_http
                serve_http(self, result.ctx, result.upgrade, result.graph)
                outcome = "finished"
            else:
                outcome = result.name
        except gevent.GreenletExit:
            ctx.trajectory.note_error("aborted (drain budget exhausted or shutdown)")
            raise                       # the greenlet ends too (it may be a reused worker)
        finally:
            if self.parked is None:     # a parked connection is finished by whoever resumes it
                self.finish(outcome)

    def socket(self) -> Any:
        """The client connection for blocking, timed calls (peek, HTTP): a ``PlainStream``.

        A TCP connection is accepted as the bare kernel socket, which a plain L4 relay or a TLS
        handshake uses as it is (``bare``); the first layer that asks for more gets it as a
        stream here, once, and from then on ``sock`` is that stream (UDP: the listener's
        socket, as it is)."""
        sock = self.sock
        if sock.__class__ is RawSocket:
            sock = self.sock = PlainStream(sock)
        return sock

    def bare(self) -> Any:
        """The client socket for a layer that waits on it by itself (TLS, a splice relay): the
        kernel socket as accepted, taken back from the stream ``socket`` made, if any."""
        sock = self.sock
        if sock.__class__ is PlainStream:
            sock = self.sock = sock.detach()
        return sock

    # -- parking ---------------------------------------------------------------------------------

    def park(self, fd: int, timeout: float, resume: Any, expire: Any) -> None:
        """Wait for the next request on ``fd`` without a greenlet; ``resume()`` runs in a fresh
        one when it is readable, ``expire()`` after ``timeout`` or at a drain."""
        self.parked = self.services.parking.park(self.id, fd, timeout, resume, expire)
        self.greenlet = None

    def unpark(self) -> None:
        """Called first by ``resume``/``expire``: the connection has a greenlet again."""
        self.parked = None
        self.greenlet = gevent.getcurrent()

    # -- ending ----------------------------------------------------------------------------------

    def finish(self, outcome: str) -> None:
        """Close and account for the connection (once)."""
        if self._finished:
            return
        self._finished = True
        services = self.services
        if self.udp is None:
            try:
                self.sock.close()
            except OSError:
                pass
        services.conns.remove(self)
        services.floor.release(self.peer[0])
        services.metrics.conn_closed(self.listener.label)
        ctx = self.ctx
        root_ctx = ctx if ctx is None or ctx.layer != "l7" else ctx.l4
        if root_ctx is not None:
            traj = root_ctx.trajectory
            now = time.time()
            services.flow_log.record((now, L4, (traj.freeze(), now, self.id, self.listener.label,
                                                traj.outcome or outcome, self.peer, self.counters.up,
                                                self.counters.down, time.monotonic() - self.started)))
            root_ctx.kv.set_lazy(None)  # break the context <-> KV cycle
        # ... and the connection <-> context one: freed by reference counting, not by the
        # cyclic collector (whose passes would otherwise cost more than the connection).
        self.ctx = None

    def abort(self) -> None:
        """End the connection now (drain budget exhausted, shutdown)."""
        if self.parked is not None:
            self.parked.close()
        elif self.greenlet is not None:
            self.greenlet.kill(block=False)

    def to_dict(self) -> dict:
        ctx = self.ctx
        codec = self.codec
        live_in, live_out = (codec.bytes_in, codec.bytes_out) if codec is not None else (0, 0)
        return {
            "id": self.id,
            "remote": _fmt(self.peer), "local": _fmt(self.local),
            "listener": self.listener.label, "proto": self.proto,
            "rule": (ctx.rule if ctx is not None else None) or self.last_rule,
            "node": ctx.node if ctx is not None else "",
            "layer": ctx.layer if ctx is not None else "l4",
            "upstream": self.upstream, "requests": self.requests, "idle": self.parked is not None,
            "bytes_in": self.counters.up + live_in, "bytes_out": self.counters.down + live_out,
            "age_secs": round(time.monotonic() - self.started, 3),
        }


def admit(services: Any, listener: Any, sock: Any, peer: tuple, plan: Any) -> None:
    """The daemon's accept handler, after the security floor: serve ``sock`` with ``plan``."""
    if listener.addr.transport == "udp":
        Connection(services, listener, listener.sock, peer, (listener.addr.ip, listener.addr.port),
                   udp=sock).serve(plan.root)
        return
    local = listener.local  # fixed by the listener's address, or asked of this socket
    try:
        if local is None:
            local = sock.getsockname()
        if not listener.nodelay:
            sock.setsockopt(6, 1, 1)  # TCP_NODELAY (else inherited from the listening socket)
    except OSError:
        reset(sock)
        services.floor.release(peer[0])
        return
    Connection(services, listener, sock, peer, local).serve(plan.root)


def _on_step(ctx: Any, node: Any, branch: str) -> None:
    """Debug flow log: one event per step."""
    ctx.services.flow_log.record({"ts": time.time(), "event": "step", "conn": ctx.conn_id, "layer": ctx.layer,
                                  "rule": ctx.rule, "node": node.id, "plugin": node.plugin, "branch": branch})


def _fmt(addr: tuple) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ConnTable:
    """The daemon's open connections by id, with the per-IP counts the security floor reads.

    Holds only IPs with open connections, so it is bounded by the connection limit."""

    def __init__(self) -> None:
        self._records: dict[str, Connection] = {}
        self.per_ip: dict[str, int] = {}
        self.total = 0

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self._records.values()))

    def add(self, conn: Connection) -> None:
        self._records[conn.id] = conn
        ip = conn.peer[0]
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        self.total += 1

    def remove(self, conn: Connection) -> None:
        if self._records.pop(conn.id, None) is None:
            return
        ip = conn.peer[0]
        left = self.per_ip.get(ip, 1) - 1
        if left <= 0:
            self.per_ip.pop(ip, None)
        else:
            self.per_ip[ip] = left

    def of_listener(self, listener: Any) -> list[Connection]:
        return [c for c in self._records.values() if c.listener is listener]
