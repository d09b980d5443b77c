"""``redirect`` (DESIGN.md §6): answer ``status`` (301 302 303 307 308; default 302) with
``Location`` set to the templated ``location``."""

from __future__ import annotations

from vane.engine.outcome import FINISHED
from vane.engine.plugin import Terminator
from vane.net.http.message import field_value
from vane.net.http.status import plain_response


class Redirect(Terminator):
    def terminate(self, ctx, args):
        status = int(args.get("status", 302))
        location = field_value(args["location"])
        ctx.response = plain_response(status, f"{status} redirect to {location}\n", {"location": location})
        return FINISHED
