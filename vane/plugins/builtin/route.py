"""``route``: try named routes in order; the branch is the first route whose predicates all hold.

What the compiler lowers a listener's rules to (DESIGN.md §3): ``{"routes": [{"name", "match"}]}``
with the rules' own predicate syntax; ``*`` when none matches. Routes that pin ``req.host``
(or ``tls.sni``) with ``eq``/``in`` are indexed by that value at link time, so a listener with
a thousand virtual hosts costs one dict lookup plus the routes that could match.
"""

from __future__ import annotations

from typing import Callable

from vane.engine.ops import compile_op, expand_predicates
from vane.engine.plugin import LinkEnv, Middleware

INDEX_KEYS = ("req.host", "tls.sni")
NO_MATCH = ("*", None)


def _compile_route(match: dict) -> Callable:
    tests = tuple((key, compile_op(op, right)) for key, op, right in expand_predicates(match))
    if len(tests) == 1:
        (key, pred), = tests
        return lambda kv: pred(kv.get(key))
    return lambda kv: all(pred(kv.get(key)) for key, pred in tests)


def _pinned(match: dict, key: str) -> frozenset[str] | None:
    spec = match.get(key)
    if isinstance(spec, str):
        return frozenset([spec])
    if isinstance(spec, list):
        return frozenset(str(v) for v in spec)
    if isinstance(spec, dict) and len(spec) == 1:
        op, right = next(iter(spec.items()))
        if op == "eq":
            return frozenset([str(right)])
        if op == "in" and isinstance(right, list):
            return frozenset(str(v) for v in right)
    return None


class Route(Middleware):
    resolve_input = False

    def __init__(self, node, env: LinkEnv) -> None:
        super().__init__(node, env)
        routes = node.input.raw["routes"]
        compiled = [((r["name"], None), _compile_route(r["match"])) for r in routes]
        self.routes = tuple(compiled)
        self.index_key: str | None = None
        self.index: dict[str, tuple] = {}
        self.unpinned: tuple = self.routes
        for key in INDEX_KEYS:
            pins = [_pinned(r["match"], key) for r in routes]
            if any(p is not None for p in pins):
                self._build_index(key, pins, [r["match"] for r in routes])
                break

    def _build_index(self, key: str, pins: list, matches: list[dict]) -> None:
        by_value: dict[str, list[int]] = {}
        for i, values in enumerate(pins):
            for v in values or ():
                by_value.setdefault(v, []).append(i)
        unpinned = [i for i, p in enumerate(pins) if p is None]
        # a route that pins the key and says nothing else matches whenever the index led to it
        only_pin = {i for i, p in enumerate(pins) if p is not None and len(expand_predicates(matches[i])) == 1}

        def entry(i: int) -> tuple:
            result, test = self.routes[i]
            return (result, None) if i in only_pin else (result, test)
        self.index_key = key
        self.unpinned = tuple(self.routes[i] for i in unpinned)
        self.index = {v: tuple(entry(i) for i in sorted(set(idx) | set(unpinned))) for v, idx in by_value.items()}

    def run(self, ctx, args):
        kv = ctx.kv
        candidates = self.routes
        if self.index_key is not None:
            candidates = self.index.get(kv.get(self.index_key) or "", self.unpinned)
        for result, test in candidates:
            if test is None or test(kv):
                return result
        return NO_MATCH
