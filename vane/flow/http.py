"""Serving HTTP on an upgraded stream (DESIGN.md §6 ``upgrade http``).

HTTP/2 when ALPN chose ``h2`` or the client opens with the h2c preface (prior knowledge),
HTTP/1.1 otherwise. Every request (HTTP/1 keep-alive and pipelining in order; every HTTP/2
stream in its own greenlet) walks the L7 tree with its own context; the response the
terminator left in the context is written here. Drain: HTTP/1 answers with
``Connection: close``; HTTP/2 sends GOAWAY and lets open streams finish.

Reload (DESIGN.md §7): each request takes the L7 tree of the graph serving now, found in it
by listener and ``upgrade http`` node (``HttpEntry``); a request, once started, finishes on
its tree. When the new graph no longer has that entry the connection ends at the boundary.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import gevent

from vane.engine.executor import walk
from vane.engine.node import Node
from vane.engine.outcome import ERROR, TIMEOUT, Rejected
from vane.flow.l7context import L7Context, simple_response
from vane.net.h1.server import IDLE, H1Limits, H1ServerConnection
from vane.net.http.errors import HttpError
from vane.net.http.message import Request, Response
from vane.net.peek import H2_PREFACE
from vane.observe.flowlog import LazyEntry

log = logging.getLogger("vane.http")

PARK_AFTER = 0.2  # seconds a keep-alive connection waits with its greenlet before it is parked


def serve_http(ctx: Any, upgrade: Node, env: Any) -> None:
    """Serve HTTP on ``ctx``'s stream; ``upgrade`` is the ``upgrade http`` node that led here."""
    scheme = "https" if ctx.layer == "l4+" else "http"
    entry = HttpEntry(env.services, ctx.listener, upgrade, env.graph)
    if ctx.kv.get("tls.alpn") == "h2" or (scheme == "http" and _h2c_preface(ctx)):
        serve_h2(ctx, entry, env, scheme)
        return
    H1Session(ctx, entry, env, scheme).run()


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
        services = self.services
        graph = services.graph if services is not None else None
        if graph is not None and graph is not self.graph:
            self.graph = graph
            self.root = graph.http_roots.get(self.key)
        return self.root


class H1Session:
    """One HTTP/1 connection's request loop; between requests it may park (vane.net.parking)."""

    __slots__ = ("ctx", "entry", "env", "conn", "services", "timeout")

    def __init__(self, ctx: Any, entry: HttpEntry, env: Any, scheme: str) -> None:
        s = env.settings
        limits = H1Limits(s.sec_max_header_bytes, s.sec_max_header_count, s.sec_header_timeout,
                          s.sec_body_idle_timeout, s.sec_keepalive_timeout, s.sec_send_timeout)
        self.ctx = ctx
        self.entry = entry
        self.env = env
        self.conn = H1ServerConnection(ctx.stream, limits, scheme)
        self.services = env.services
        self.timeout = s.flow_execution_timeout

    def run(self) -> None:
        """Serve requests until the connection ends or is parked."""
        conn = self.conn
        try:
            while self._serve_one():
                pass
        finally:
            record = self.ctx.record
            if record is not None:
                record.counters.up += conn.bytes_in
                record.counters.down += conn.bytes_out
                conn.bytes_in = conn.bytes_out = 0
                record.ctx = self.ctx

    def _serve_one(self) -> bool:
        """One request; False when the connection must end."""
        conn = self.conn
        ctx = self.ctx
        services = self.services
        try:
            req = conn.next_request(PARK_AFTER if conn.requests else None)
        except HttpError as exc:
            _write_error(conn, exc.status, ctx)
            conn.linger_close()
            return False
        if req is IDLE:
            # quiet for a while: close if draining, else wait without a greenlet
            return not (services is None or services.draining.is_set() or self._park())
        if req is None:
            return False
        root = self.entry.current()
        if root is None:                # reloaded away: this listener serves no such HTTP any more
            _write_error(conn, 421, ctx)
            return False
        rctx = L7Context(ctx, req, services, self.env.settings, conn.requests)
        rctx.h1 = conn
        record = ctx.record
        if record is not None:
            record.ctx = rctx
            record.requests += 1
        outcome = walk(root, rctx, self.timeout)
        if rctx.hijack is not None:  # a WebSocket tunnel took the connection over, and has ended
            finish_request(rctx, rctx.response or simple_response(101), 0)
            return False
        resp = rctx.final_response()
        if resp is None or outcome is ERROR or outcome is TIMEOUT or outcome.__class__ is Rejected:
            resp = failure_response(rctx, outcome)
            conn.close_after()
        if services is not None and services.draining.is_set():
            conn.close_after()
        try:
            sent = conn.write_response(resp, req)
        except Exception as exc:  # noqa: BLE001 - client gone, or the upstream body failed mid-stream
            rctx.trajectory.note_error(f"response aborted: {type(exc).__name__}: {exc}")
            finish_request(rctx, resp, 0, aborted=True)
            return False
        finish_request(rctx, resp, sent)
        if conn.keep_alive:
            return True
        if conn.unread_input():
            conn.linger_close()
        return False

    # -- parking ---------------------------------------------------------------------------------

    def _park(self) -> bool:
        ctx = self.ctx
        record = ctx.record
        services = self.services
        if record is None or record.finish is None or not self.conn.idle():
            return False
        stream = ctx.stream
        pending = getattr(stream, "pending", None)
        if pending is not None and pending():
            return False
        record.parked = services.parking.park(record.id, stream.fileno(), self.conn.limits.keepalive_timeout,
                                              self._resume, self._expire)
        record.greenlet = None
        return True

    def _resume(self) -> None:
        record = self.ctx.record
        record.parked = None
        record.greenlet = gevent.getcurrent()
        try:
            self.run()
        except gevent.GreenletExit:
            self.ctx.trajectory.note_error("aborted (drain budget exhausted or shutdown)")
        except Exception:  # noqa: BLE001 - never let a connection greenlet die silently
            log.exception("HTTP connection failed", extra=self.ctx.log_extra())
        finally:
            if record.parked is None:
                record.finish("finished")

    def _expire(self) -> None:
        record = self.ctx.record
        record.parked = None
        record.finish("finished")


def _h2c_preface(ctx: Any) -> bool:
    """Cleartext HTTP/2 with prior knowledge: the stream opens with the client preface."""
    return ctx.layer == "l4" and ctx.peeked().startswith(H2_PREFACE)


def serve_h2(ctx: Any, entry: HttpEntry, env: Any, scheme: str) -> None:
    from vane.net.h2.server import H2Limits, H2ServerConnection

    settings = env.settings
    services = env.services
    timeout = settings.flow_execution_timeout
    record = ctx.record

    def handle(req: Request) -> Response:
        root = entry.current()
        if root is None:                # reloaded away: the client retries on a new connection
            conn.goaway()
            return simple_response(421)
        rctx = L7Context(ctx, req, services, settings, req.stream_id or 0)
        if record is not None:
            record.requests += 1
        outcome = walk(root, rctx, timeout)
        resp = rctx.final_response()
        if resp is None or outcome is ERROR or outcome is TIMEOUT or outcome.__class__ is Rejected:
            resp = failure_response(rctx, outcome)
        finish_request(rctx, resp, resp.body.length or 0)
        return resp

    limits = H2Limits(max_concurrent_streams=settings.sec_h2_max_streams,
                      max_header_list_size=settings.sec_max_header_bytes,
                      max_header_count=settings.sec_max_header_count,
                      header_timeout=settings.sec_header_timeout,
                      body_idle_timeout=settings.sec_body_idle_timeout,
                      send_timeout=settings.sec_send_timeout)
    conn = H2ServerConnection(ctx.stream, handle, limits, scheme)
    watcher = None
    if services is not None:
        watcher = gevent.spawn(_goaway_on_drain, services.draining, conn)
    try:
        conn.serve()
    finally:
        if watcher is not None:
            watcher.kill(block=False)
        if record is not None:
            record.counters.up += getattr(conn, "bytes_in", 0)
            record.counters.down += getattr(conn, "bytes_out", 0)


def _goaway_on_drain(draining: Any, conn: Any) -> None:
    draining.wait()
    conn.goaway()


def failure_response(rctx: L7Context, outcome: Any) -> Response:
    """What a request gets when its flow did not produce a response."""
    if outcome.__class__ is Rejected:
        status = outcome.status
    elif rctx.fail_status is not None:
        status = rctx.fail_status
    elif outcome is TIMEOUT:
        status = 504
    else:
        status = 500
    return simple_response(status)


def _write_error(conn: H1ServerConnection, status: int, ctx: Any) -> None:
    try:
        conn.write_error(status)
    except OSError:
        pass
    ctx.trajectory.note_error(f"http: {status}")


def finish_request(rctx: L7Context, resp: Response, sent: int, aborted: bool = False) -> None:
    """Metrics and the flow-log trajectory of one request."""
    seconds = time.perf_counter() - rctx.started
    services = rctx.services
    rctx.kv.set_lazy(None)  # break the context <-> KV cycle: the request is freed at once, not by the GC
    if services is None:
        return
    services.metrics.request(rctx.rule, resp.status, seconds)
    traj = rctx.trajectory
    req = rctx.request
    conn = rctx.conn
    now = time.time()
    services.flow_log.record(LazyEntry(
        now, _l7_entry, traj, now, rctx.conn_id, rctx.seq, conn.listener, resp.status, req.method, req.host,
        req.path, req.version, conn.peer, req.body.length or 0, sent,
        "aborted" if aborted else (traj.outcome or "finished"), seconds))


def _l7_entry(traj: Any, ts: float, conn_id: str, seq: int, listener: str, status: int, method: str, host: str,
              path: str, version: str, peer: tuple, bytes_in: int, bytes_out: int, outcome: str,
              seconds: float) -> dict:
    entry = traj.to_dict()
    entry.update({"ts": ts, "conn": conn_id, "request": f"{conn_id}/{seq}", "listener": listener,
                  "layer": "l7", "status": status,
                  "method": method, "host": host, "path": path, "version": version,
                  "remote": f"{peer[0]}:{peer[1]}", "bytes_in": bytes_in, "bytes_out": bytes_out,
                  "outcome": outcome, "ms": round(seconds * 1000.0, 3)})
    return entry
