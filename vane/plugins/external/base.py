"""External plugins (DESIGN.md §6): the contract all four drivers share.

Input ``{"input": {resolved inputs}, "kv": {the keys the plugin declared it reads}}``;
output ``{"branch": "...", "store": {"k": "v"}}``. A reply that is not valid JSON, names an
undeclared branch or stores a key with a brace is a runtime error.

Every call goes through the plugin's passive circuit breaker (DESIGN.md §4, seed 001): a
runtime error or a ``failure`` answer opens it; while it is open (the quiet period) calls take
``failure`` without any I/O; the next success closes it. One breaker per declared plugin,
shared by its nodes in a graph.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from vane.engine.breaker import Breaker
from vane.engine.plugin import LinkEnv, Middleware

DEFAULT_TIMEOUT = 2.0
MAX_REPLY = 1024 * 1024
FAILURE = ("failure", None)

log = logging.getLogger("vane.flow")


class ExternalError(Exception):
    """The external plugin misbehaved (bad reply, timeout, exit status)."""


class ExternalPlugin(Middleware):
    """A declared external plugin at one node; the driver subclass does the I/O (``call``)."""

    def __init__(self, node, env: LinkEnv) -> None:
        super().__init__(node, env)
        spec = node.spec
        self.name = spec.name
        self.options = spec.options
        self.branches = frozenset(spec.branches)
        self.reads = tuple(self.options.get("reads") or ())
        self.timeout = float(self.options.get("timeout") or DEFAULT_TIMEOUT)
        quiet = env.settings.external_plugin_quiet_period if env.settings is not None else 3.0
        breakers = env.breakers
        self.breaker = breakers.get(self.name)
        if self.breaker is None:
            self.breaker = breakers[self.name] = Breaker(quiet)

    def payload(self, ctx: Any, args: Any) -> bytes:
        kv = ctx.kv
        return json.dumps({"input": args, "kv": {k: kv.get(k) or "" for k in self.reads}}).encode()

    def parse(self, raw: bytes) -> tuple[str, dict | None]:
        if len(raw) > MAX_REPLY:
            raise ExternalError(f"reply larger than {MAX_REPLY} bytes")
        try:
            reply = json.loads(raw)
        except ValueError as exc:
            raise ExternalError(f"reply is not JSON: {exc}") from None
        if not isinstance(reply, dict) or not isinstance(reply.get("branch"), str):
            raise ExternalError('reply must be an object with a string "branch"')
        branch = reply["branch"]
        if branch not in self.branches:
            raise ExternalError(f"reply names undeclared branch {branch!r}")
        store = reply.get("store") or None
        if store is not None:
            if not isinstance(store, dict):
                raise ExternalError('"store" must be an object')
            store = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in store.items()}
        return branch, store

    def run(self, ctx, args):
        breaker = self.breaker
        if not breaker.allow():
            return FAILURE
        try:
            branch, store = self.parse(self.call(self.payload(ctx, args)))
        except Exception as exc:  # noqa: BLE001 - an external runtime error is the failure branch
            breaker.failed(f"{type(exc).__name__}: {exc}")
            ctx.trajectory.note_error(f"{self.name}: {type(exc).__name__}: {exc}")
            log.warning("external plugin %s failed: %s", self.name, exc, extra=ctx.log_extra())
            return FAILURE
        if branch == "failure":
            breaker.failed("failure branch")
        else:
            breaker.succeeded()
        return branch, store

    def call(self, data: bytes) -> bytes:
        raise NotImplementedError
