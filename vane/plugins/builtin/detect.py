"""``detect``: classify the first bytes without consuming them (DESIGN.md §5, §6).

Branch = ``peek.protocol``: tls, http, h2c, ssh, dns, quic or unknown.
"""

from __future__ import annotations

from vane.engine.plugin import Middleware


class Detect(Middleware):
    def run(self, ctx, args):
        return ctx.protocol(), None
