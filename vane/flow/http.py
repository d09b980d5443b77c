"""The HTTP layer of a connection (DESIGN.md §6 ``upgrade http``): after ``upgrade http`` the
connection speaks HTTP, and every request, HTTP/1.1 or HTTP/2, goes through one
``HttpService.handle`` (walk the L7 tree, pick the failure status) and one
``HttpService.finished`` (metrics and the flow-log entry, once the answer has gone out).

HTTP/2 when ALPN chose ``h2`` or the client opens with the h2c preface (prior knowledge),
HTTP/1.1 otherwise: keep-alive and pipelining in order, parking between requests
(``Connection.park``), and the WebSocket tunnel a ``proxy`` opened (``L7Context.tunnel``:
the 101 goes out, the client stream leaves the codec and the bytes are relayed). Drain:
HTTP/1 answers with ``Connection: close``; HTTP/2 sends GOAWAY and lets open streams finish.

Reload (DESIGN.md §7): each request takes the L7 tree of the graph serving now, found in it by
listener and ``upgrade http`` node (``HttpEntry``); a request, once started, finishes on its
tree. When the new graph no longer has that entry the connection is told to go elsewhere (421).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import gevent

from vane.engine.executor import walk
from vane.engine.node import Node
from vane.engine.outcome import ERROR, TIMEOUT, Rejected
from vane.net.h1.server import IDLE, H1Limits, H1ServerConnection
from vane.net.http.errors import HttpError
from vane.net.http.message import Request, Response
from vane.net.http.status import plain_response
from vane.net.peek import H2_PREFACE
from vane.net.tunnel import relay
from vane.net.upstream.websocket import stream_tunnel
from vane.observe.flowlog import L7

from .l7context import L7Context

log = logging.getLogger("vane.http")

PARK_AFTER = 0.2  # seconds a keep-alive connection waits with its greenlet before it is parked


def serve_http(conn: Any, ctx: Any, upgrade: Node, graph: Any) -> None:
    """Serve HTTP on ``ctx``'s stream until the connection ends (or parks)."""
    scheme = "https" if ctx.layer == "l4+" else "http"
    service = HttpService(conn, ctx, HttpEntry(conn.services, ctx.listener, upgrade, graph))
    if ctx.udp is not None:             # QUIC: ``upgrade quic`` negotiated h3
        from vane.net.quic.serve import serve_h3
        serve_h3(service)
        return
    if ctx.layer == "l4+" and ctx.kv.get("tls.alpn") == "h2":
        serve_h2(service, scheme)
        return
    session = H1Session(service, scheme)
    # cleartext HTTP/2 with prior knowledge: the first bytes, read as the first request's, are
    # the client preface (read, not peeked: the header timeout bounds the wait, once)
    if ctx.layer == "l4":
        ctx.read_from_now()
        if session.codec.opens_with(H2_PREFACE):
            serve_h2(service, scheme, session.codec.take_input(), session.codec.input_since)
            return
    session.run()


class HttpEntry:
    """Where a connection's requests start: the L7 tree after its ``upgrade http`` node, in
    the graph serving now (looked up again only when the daemon's graph changed)."""

    __slots__ = ("services", "key", "graph", "root")

    def __init__(self, services: Any, listener: str, upgrade: Node, graph: Any) -> None:
        self.services = services
        self.key = (listener, upgrade.id)
        self.graph = graph
        self.root: Node | None = upgrade.next

    def current(self) -> Node | None:
        """The tree for the next request; None when the graph serving now has no such entry."""
        graph = self.services.graph
        if graph is not None and graph is not self.graph:
            self.graph = graph
            self.root = graph.http_roots.get(self.key)
        return self.root


class HttpService:
    """The requests of one connection: each one's walk and answer, and its record afterwards."""

    __slots__ = ("conn", "ctx", "entry", "services", "settings", "timeout")

    def __init__(self, conn: Any, ctx: Any, entry: HttpEntry) -> None:
        self.conn = conn
        self.ctx = ctx
        self.entry = entry
        self.services = conn.services
        self.settings = self.services.settings
        self.timeout = self.settings.flow_execution_timeout

    def handle(self, req: Request, seq: int) -> tuple[Response, L7Context | None]:
        """Walk the current L7 tree for ``req``; the answer, and the context ``finished``
        takes (None when the request could not start: the connection must end)."""
        root = self.entry.current()
        if root is None:                # reloaded away: this listener serves no such HTTP any more
            self.ctx.trajectory.note_error("http: the listener no longer serves this connection (421)")
            return plain_response(421), None
        rctx = L7Context(self.ctx, req, self.services, self.settings, seq)
        conn = self.conn
        conn.ctx = rctx
        conn.requests += 1
        outcome = walk(root, rctx, self.timeout)
        resp = rctx.final_response()
        if resp is None or outcome is ERROR or outcome is TIMEOUT or outcome.__class__ is Rejected:
            if rctx.tunnel is not None:
                rctx.tunnel[0].close()
                rctx.tunnel = None
            resp = failure_response(rctx, outcome)
        return resp, rctx

    def finished(self, rctx: L7Context, resp: Response, sent: int, aborted: bool = False,
                 body_sent: int | None = None) -> None:
        """The access-log line, metrics and the flow-log entry of one request whose answer went
        out (or broke off): ``sent`` bytes in all, ``body_sent`` of them its body (all of them
        when None)."""
        seconds = time.perf_counter() - rctx.started
        now = time.time()
        services = self.services
        access = services.access_log
        if access is not None:
            access.request(rctx, resp.status, sent if body_sent is None else body_sent, seconds, now)
        rctx.kv.set_lazy(None)  # break the context <-> KV cycle: the request is freed at once, not by the GC
        services.metrics.request(rctx.rule, resp.status, seconds)
        traj = rctx.trajectory
        req = rctx.request
        conn = self.conn
        services.flow_log.record((now, L7, (
            traj.freeze(), now, rctx.conn_id, rctx.seq, conn.listener.label, resp.status, req.method,
            req.host, req.path, req.version, conn.peer, req.body.length or 0, sent,
            "aborted" if aborted else (traj.outcome or "finished"), seconds)))
        conn.ctx = self.ctx
        conn.last_rule = rctx.rule


def failure_response(rctx: L7Context, outcome: Any) -> Response:
    """What a request gets when its flow did not produce an answer."""
    if outcome.__class__ is Rejected:
        status = outcome.status
    elif rctx.fail_status is not None:
        status = rctx.fail_status
    elif outcome is TIMEOUT:
        status = 504
    else:
        status = 500
    return plain_response(status)


# -- HTTP/1.1 ------------------------------------------------------------------------------------

class H1Session:
    """One HTTP/1 connection's request loop; between requests it may park."""

    __slots__ = ("service", "codec", "draining")

    def __init__(self, service: HttpService, scheme: str) -> None:
        s = service.settings
        limits = H1Limits(s.sec_max_header_bytes, s.sec_max_header_count, s.sec_header_timeout,
                          s.sec_body_idle_timeout, s.sec_keepalive_timeout, s.sec_send_timeout,
                          s.sec_max_uri_bytes)
        self.service = service
        self.codec = H1ServerConnection(service.ctx.stream, limits, scheme)
        self.draining = service.services.draining

    def run(self) -> None:
        """Serve requests until the connection ends or is parked."""
        codec = self.codec
        conn = self.service.conn
        conn.codec = codec
        try:
            while self._serve_one():
                pass
        finally:
            conn.codec = None
            counters = conn.counters
            counters.up += codec.bytes_in
            counters.down += codec.bytes_out
            codec.bytes_in = codec.bytes_out = 0

    def _serve_one(self) -> bool:
        """One request; False when the connection must end."""
        codec = self.codec
        try:
            req = codec.next_request(PARK_AFTER if codec.requests else None)
        except HttpError as exc:
            self._write_error(exc.status)
            codec.linger_close()
            return False
        if req is IDLE:             # quiet for a while: close if draining, else wait without a greenlet
            return not (self.draining.is_set() or self._park())
        if req is None:
            return False
        service = self.service
        resp, rctx = service.handle(req, codec.requests)
        if rctx is None:
            codec.close_after()
        elif rctx.tunnel is not None:
            return self._tunnel(rctx, resp, req)
        elif resp is not rctx.response:
            codec.close_after()     # the flow failed: its request body may be half read
        if self.draining.is_set():
            codec.close_after()
        try:
            sent = codec.write_response(resp, req)
        except Exception as exc:  # noqa: BLE001 - client gone, or the upstream body failed mid-stream
            if rctx is not None:
                rctx.trajectory.note_error(f"response aborted: {type(exc).__name__}: {exc}")
                service.finished(rctx, resp, 0, aborted=True)
            return False
        if rctx is not None:
            service.finished(rctx, resp, sent, body_sent=max(0, sent - codec.head_out))
        if codec.keep_alive:
            return True
        if codec.unread_input():
            codec.linger_close()
        return False

    def _write_error(self, status: int) -> None:
        try:
            self.codec.write_error(status)
        except OSError:
            pass
        self.service.ctx.trajectory.note_error(f"http: {status}")

    def _tunnel(self, rctx: L7Context, resp: Response, req: Request) -> bool:
        """A terminator switched protocols upstream (WebSocket): send its 101, then relay the
        client's stream and the upstream's until either ends. The connection ends with it."""
        upstream, rest, idle = rctx.tunnel
        rctx.tunnel = None
        codec = self.codec
        try:
            sent = codec.write_response(resp, req)
        except OSError:
            upstream.close()
            self.service.finished(rctx, resp, 0, aborted=True)
            return False
        client, client_rest = codec.detach()
        counters = self.service.conn.counters
        for stream in (client, upstream):
            try:
                stream.settimeout(None)    # the relay's idle timeout alone decides
            except (AttributeError, OSError):
                pass
        relay(client, upstream, idle, counters, client_prefix=rest, upstream_prefix=client_rest)
        self.service.finished(rctx, resp, sent, body_sent=0)
        return False

    # -- parking ---------------------------------------------------------------------------------

    def _park(self) -> bool:
        stream = self.service.ctx.stream
        if not self.codec.idle():
            return False
        pending = getattr(stream, "pending", None)
        if pending is not None and pending():
            return False
        self.service.conn.park(stream.fileno(), self.codec.limits.keepalive_timeout, self._resume, self._expire)
        return True

    def _resume(self) -> None:
        conn = self.service.conn
        conn.unpark()
        try:
            self.run()
        except gevent.GreenletExit:
            self.service.ctx.trajectory.note_error("aborted (drain budget exhausted or shutdown)")
        except Exception:  # noqa: BLE001 - never let a connection greenlet die silently
            log.exception("HTTP connection failed", extra=self.service.ctx.log_extra())
        finally:
            if conn.parked is None:
                conn.finish("finished")

    def _expire(self) -> None:
        conn = self.service.conn
        conn.unpark()
        conn.finish("finished")


# -- HTTP/2 --------------------------------------------------------------------------------------

def serve_h2(service: HttpService, scheme: str, preread: bytes = b"", since: float = 0.0) -> None:
    from vane.net.h2.server import H2Limits, H2ServerConnection

    settings = service.settings

    def handle(req: Request) -> tuple[Response, Any]:
        resp, rctx = service.handle(req, req.stream_id or 0)
        if rctx is None:                # reloaded away: the client retries on a new connection
            codec.goaway()
        elif rctx.tunnel is not None:   # extended CONNECT: the WebSocket rides on the stream
            resp, rctx.tunnel = stream_tunnel(req, resp, rctx.tunnel), None
        return resp, rctx

    def finished(rctx: Any, resp: Response, sent: int, aborted: bool) -> None:
        if rctx is not None:
            service.finished(rctx, resp, sent, aborted)

    tree: list[Any] = [None, True]      # the last L7 tree seen, and whether its walk can block

    def inline(req: Request) -> bool:
        """The walk cannot wait on I/O: the codec may run it in its reader."""
        root = service.entry.current()
        if root is not tree[0]:
            tree[0] = root
            tree[1] = root is not None and any(node.spec.blocking for node in root.walk())
        return not tree[1]

    limits = H2Limits(max_concurrent_streams=settings.sec_h2_max_streams,
                      max_header_list_size=settings.sec_max_header_bytes,
                      max_header_count=settings.sec_max_header_count,
                      max_uri_bytes=settings.sec_max_uri_bytes,
                      header_timeout=settings.sec_header_timeout,
                      body_idle_timeout=settings.sec_body_idle_timeout,
                      send_timeout=settings.sec_send_timeout,
                      stream_buffer=settings.sec_h2_stream_window,
                      connection_window=settings.sec_h2_connection_window)
    codec = H2ServerConnection(service.ctx.stream, handle, limits, scheme, finished=finished, inline=inline,
                               preread=preread, since=since)
    watcher = gevent.spawn(_goaway_on_drain, service.services.draining, codec)
    conn = service.conn
    conn.codec = codec
    try:
        codec.serve()
    finally:
        watcher.kill(block=False)
        conn.codec = None
        counters = conn.counters
        counters.up += codec.bytes_in
        counters.down += codec.bytes_out


def _goaway_on_drain(draining: Any, codec: Any) -> None:
    draining.wait()
    codec.goaway()
