"""``acme_challenge``: the ACME HTTP-01 responder (RFC 8555 §8.3). The compiler puts it before
every rule on cleartext HTTP listeners when the config asks for ACME certificates; it answers
``/.well-known/acme-challenge/<token>`` with the key authorization of a pending challenge and
404 for any other token. Only tokens of orders vaned itself placed are known."""

from __future__ import annotations

from vane.engine.outcome import FINISHED
from vane.engine.plugin import Terminator
from vane.net.http.status import plain_response

PREFIX = "/.well-known/acme-challenge/"


class AcmeChallenge(Terminator):
    def terminate(self, ctx, args):
        services = self.env.services
        board = getattr(services, "acme_challenges", None) if services is not None else None
        path = ctx.request.path
        token = path[len(PREFIX):] if path.startswith(PREFIX) else ""
        answer = board.http01(token) if board is not None and token else None
        if answer is None:
            return ctx.respond_status(404)
        ctx.response = plain_response(200, answer, None, "application/octet-stream")
        return FINISHED
