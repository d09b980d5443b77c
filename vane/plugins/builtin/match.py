"""``match``: compare a value with an operator (DESIGN.md §3, §6). Branches ``true``/``false``.

Input ``{"left", "op", "right"}`` or ``{"all": [conditions]}`` (all must hold; what the
compiler lowers a rule's predicates to). A ``left`` that is exactly ``{{key}}`` reads the key
directly, so a missing key is told apart from an empty one (``exists``); operators with a
static right-hand side are compiled once, at link time.
"""

from __future__ import annotations

from typing import Any, Callable

from vane.engine.ops import Predicate, compile_op, compile_op_cached
from vane.engine.plugin import LinkEnv, Middleware
from vane.engine.template import Ref, parse, render

TRUE = ("true", None)
FALSE = ("false", None)


def _compile_cond(cond: dict, limit: int) -> Callable[[Any], bool]:
    left = cond["left"]
    parts = parse(left) if "{{" in left else (left,)
    if len(parts) == 1 and isinstance(parts[0], Ref) and isinstance(parts[0].key, str):
        key = parts[0].key

        def get_left(kv, _key=key):
            return kv.get(_key)
    elif len(parts) == 1 and isinstance(parts[0], str):
        const = parts[0]

        def get_left(kv, _c=const):
            return _c
    else:
        def get_left(kv, _p=parts):
            return render(_p, kv, limit, None)

    op, right = cond["op"], cond.get("right")
    if isinstance(right, str) and "{{" in right:
        rparts = parse(right)

        def test(kv):
            return compile_op_cached(op, render(rparts, kv, limit, None))(get_left(kv))
        return test
    if op == "exists" and right is None:
        right = True
    pred: Predicate = compile_op(op, right)
    return lambda kv: pred(get_left(kv))


class Match(Middleware):
    resolve_input = False

    def __init__(self, node, env: LinkEnv) -> None:
        super().__init__(node, env)
        raw = node.input.raw
        limit = env.settings.max_template_result_size if env.settings else 65536
        conds = raw["all"] if "all" in raw else [raw]
        self.tests = tuple(_compile_cond(c, limit) for c in conds)
        if len(self.tests) == 1:
            self.run = self._run_one  # type: ignore[method-assign]

    def _run_one(self, ctx, args):
        return TRUE if self.tests[0](ctx.kv) else FALSE

    def run(self, ctx, args):
        kv = ctx.kv
        for test in self.tests:
            if not test(kv):
                return FALSE
        return TRUE
