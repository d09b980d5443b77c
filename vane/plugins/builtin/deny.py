"""``deny`` (DESIGN.md §6): at L4 close with a reset (SO_LINGER 0); at L7 answer ``status``
(default 403) with an optional ``body`` and ``headers``."""

from __future__ import annotations

from vane.engine.outcome import FINISHED
from vane.engine.plugin import Terminator


class Deny(Terminator):
    def terminate(self, ctx, args):
        if ctx.layer != "l7":
            if getattr(ctx, "udp", None) is not None:
                return FINISHED  # UDP: the session is simply not created
            ctx.reset_client()
            return FINISHED
        return ctx.respond_status(int(args.get("status", 403)), args.get("body"), args.get("headers"))
