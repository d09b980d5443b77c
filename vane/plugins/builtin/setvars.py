"""``set``: write ``var.*`` keys (DESIGN.md §6). Branch ``next``."""

from __future__ import annotations

from vane.engine.ops import as_text
from vane.engine.plugin import Middleware

NEXT = ("next", None)


class SetVars(Middleware):
    def run(self, ctx, args):
        kv = ctx.kv
        for key, value in args.items():
            kv.set(key, value if isinstance(value, str) else as_text(value))
        return NEXT
