"""External plugins (DESIGN.md §6): the contract all four drivers share.

Input ``{"input": {resolved inputs}, "kv": {the keys the plugin declared it reads}}``;
output ``{"branch": "...", "store": {"k": "v"}}``. A reply that is not valid JSON, names an
undeclared branch or stores a key with a brace is a runtime error, which the executor's
circuit breaker turns into the ``failure`` branch.
"""

from __future__ import annotations

import json
from typing import Any

from vane.engine.breaker import Breaker
from vane.engine.plugin import LinkEnv, Middleware

DEFAULT_TIMEOUT = 2.0
MAX_REPLY = 1024 * 1024


class ExternalError(Exception):
    """The external plugin misbehaved (bad reply, timeout, exit status)."""


class ExternalPlugin(Middleware):
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
        return self.parse(self.call(self.payload(ctx, args)))

    def call(self, data: bytes) -> bytes:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"driver": self.node.spec.driver, "breaker": self.breaker.to_dict()}
