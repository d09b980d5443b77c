"""The flow executor (DESIGN.md §4; seeds 000 and 001).

Per step: resolve the node's input through the template engine -> run the plugin -> store its
outputs under the node's scoped key -> follow the branch. The walk ends at a terminator:
finished, or an upgrade that continues at ``next`` with a new context. Plain blocking code:
a connection greenlet calls :func:`walk` and the plugins block on gevent sockets.

The flow timeout bounds the walk up to the moment a terminator owns the connection; a tunnel
or stream the terminator runs is not cut by it. A plugin that raises is an anomaly, not a
decision: the walk ends with ERROR (L7 answers 500, L4 closes) and is logged with plugin,
rule, node and connection id. An exception that says the client is at fault (it carries
``client_fault = True`` and an HTTP ``status``, as the HTTP codecs' errors do) ends the walk
as ``Rejected(status)`` instead, with one rate-limited info line: a client's mistake is never
an ERROR.
"""

from __future__ import annotations

import logging
from time import perf_counter
from typing import Mapping

from gevent import Timeout

from vane.observe.logging import RateLimitedLogger

from .context import Context
from .node import Node
from .outcome import ERROR, FINISHED, TIMEOUT, Outcome, Rejected, Upgrade

log = logging.getLogger("vane.flow")
client_log = RateLimitedLogger(logging.getLogger("vane.flow.client"), interval=10.0)

_IDLE = Timeout._start_new_or_dummy(None)  # the dummy timer: close() is a no-op


class FlowError(Exception):
    """The flow itself is wrong at run time (no branch to follow, a bad output key)."""


def walk(root: Node, ctx: Context, timeout: float | None) -> Outcome:
    """Run the tree from ``root``; return how it ended. Never raises (but BaseException)."""
    node = root
    traj = ctx.trajectory
    started = perf_counter()
    timer = _IDLE  # armed lazily: a walk of pure nodes (route, match, respond) cannot block
    try:
        while True:
            ctx.node = node.id
            if node.rule is not None:
                ctx.rule = traj.rule = node.rule
            impl = node.impl
            t0 = perf_counter()
            if node.blocking and timer is _IDLE and timeout is not None:
                timer = Timeout._start_new_or_dummy(max(timeout - (t0 - started), 0.000001))
            try:
                args = node.input.resolve(ctx.kv, traj.note_missing) if impl.resolve_input else None
                if node.terminal:
                    if timer is not _IDLE:
                        timer.close()
                    outcome = impl.terminate(ctx, args)
                    traj.steps.append((node.id, node.plugin, "", (perf_counter() - t0) * 1000.0))
                    if isinstance(outcome, Upgrade):
                        if node.next is None:
                            traj.outcome = "upgrade"
                            return outcome
                        ctx = outcome.ctx
                        traj = ctx.trajectory
                        node = node.next
                        timer = _IDLE
                        started = perf_counter()
                        continue
                    traj.outcome = outcome.name
                    return outcome
                branch, store = impl.run(ctx, args)
                if store:
                    _store(node, ctx, store)
            except Exception as exc:  # noqa: BLE001 - any plugin failure ends the walk as ERROR
                if getattr(exc, "client_fault", False):
                    return _rejected(node, ctx, exc, t0)
                traj.steps.append((node.id, node.plugin, "!error", (perf_counter() - t0) * 1000.0))
                traj.note_error(f"{node.plugin}: {type(exc).__name__}: {exc}")
                traj.outcome = "error"
                log.error("plugin %s failed: %s", node.plugin, exc, exc_info=not isinstance(exc, FlowError),
                          extra={"conn": ctx.conn_id, "rule": ctx.rule, "node": node.id})
                return ERROR
            if ctx.on_step is not None:
                ctx.on_step(ctx, node, branch)
            traj.steps.append((node.id, node.plugin, branch, (perf_counter() - t0) * 1000.0))
            nxt = node.branches.get(branch) or node.default
            if nxt is None:
                traj.note_error(f"{node.plugin}: no branch {branch!r} at {node.id}")
                traj.outcome = "error"
                log.error("plugin %s returned branch %r which the flow does not handle", node.plugin, branch,
                          extra={"conn": ctx.conn_id, "rule": ctx.rule, "node": node.id})
                return ERROR
            node = nxt
    except Timeout as exc:
        if exc is not timer:  # a plugin's own timeout escaped it: an anomaly like any other
            traj.note_error(f"{node.plugin}: unhandled timeout {exc}")
            traj.outcome = "error"
            log.error("plugin %s let a timeout escape: %s", node.plugin, exc,
                      extra={"conn": ctx.conn_id, "rule": ctx.rule, "node": node.id})
            return ERROR
        traj.outcome = "timeout"
        traj.note_error(f"flow timeout after {timeout}s at {node.id}")
        log.warning("flow timed out after %ss", timeout, extra={"conn": ctx.conn_id, "rule": ctx.rule,
                                                                 "node": node.id})
        return TIMEOUT
    finally:
        if timer is not _IDLE:
            timer.close()


def _rejected(node: Node, ctx: Context, exc: Exception, t0: float) -> Rejected:
    status = getattr(exc, "status", 400)
    traj = ctx.trajectory
    traj.steps.append((node.id, node.plugin, "!client", (perf_counter() - t0) * 1000.0))
    traj.note_error(f"{node.plugin}: client: {exc}")
    traj.outcome = "rejected"
    client_log.log((ctx.rule, status), logging.INFO, "request rejected with %d at %s: %s", status, node.id, exc,
                   extra={"conn": ctx.conn_id, "rule": ctx.rule, "node": node.id})
    return Rejected(status)


def _store(node: Node, ctx: Context, store: Mapping[str, object]) -> None:
    scope = node.scope
    kv = ctx.kv
    for key, value in store.items():
        if "{" in key or "}" in key:
            raise FlowError(f"plugin {node.plugin} tried to store key {key!r}: braces are not allowed")
        kv.set(scope + key, value)


__all__ = ["walk", "FlowError", "FINISHED", "ERROR", "TIMEOUT", "Rejected", "Upgrade"]
