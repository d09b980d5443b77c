"""``upgrade`` (DESIGN.md §6): a layer transition; the walk goes on at ``output.next``.

``tls``: terminate TLS with the node's certificates (contexts built when the graph is linked,
taken from the daemon-scoped cache so session tickets survive reloads); the next layer is
``l4+`` with the negotiated ``tls.*`` keys. ``http``: serve HTTP/1.1 or HTTP/2 on the stream;
every request walks ``next`` with its own L7 context.
"""

from __future__ import annotations

import logging

from vane.engine.outcome import FINISHED, ServeHttp
from vane.engine.outcome import Upgrade as UpgradeOutcome
from vane.engine.plugin import LinkEnv, Terminator
from vane.net.sockets import reset

log = logging.getLogger("vane.tls")


def _acme_slot(services, names: tuple[str, ...]):
    """The live slot of an ACME certificate; offline (`vane compile`) a throwaway fallback."""
    if services is not None:
        return services.acme.slot(names)
    from vane.acme.manager import AcmeManager
    from vane.net.tls.certs import CertSlot
    return CertSlot(names, AcmeManager._fallback(names))


class Upgrade(Terminator):
    def __init__(self, node, env: LinkEnv) -> None:
        super().__init__(node, env)
        raw = node.input.raw
        self.protocol = raw["protocol"]
        self.tls = None
        if self.protocol == "tls":
            from vane.net.tls.server import ServerTLS
            services = env.services
            certs = [(c["cert"], c["key"]) if "cert" in c else _acme_slot(services, tuple(c["acme"]))
                     for c in raw["certs"]]
            self.tls = ServerTLS(certs, tuple(raw.get("alpn") or ("h2", "http/1.1")),
                                 cache=services.tls_cache if services is not None else None,
                                 handshake_timeout=env.settings.sec_handshake_timeout,
                                 challenges=services.acme_challenges if services is not None else None)

    def terminate(self, ctx, args):
        if self.protocol == "http":
            return ServeHttp(ctx, self.node, self.env.graph)
        services = self.env.services
        floor = services.floor if services is not None else None
        if floor is not None and not floor.allow_handshake(ctx.kv.get("conn.ip")):
            reset(ctx.sock)
            return FINISHED
        try:
            stream = self.tls.accept(ctx.sock)
        except OSError as exc:
            ctx.trajectory.note_error(f"tls: {exc}")
            log.info("TLS handshake failed: %s", exc, extra=ctx.log_extra())
            return FINISHED
        if stream.alpn == "acme-tls/1":  # a CA's TLS-ALPN-01 validation: the handshake was the answer
            stream.close()
            return FINISHED
        new = ctx.upgraded(stream)
        kv = new.kv
        kv.set("tls.version", stream.version or "")
        kv.set("tls.cipher", stream.cipher or "")
        kv.set("tls.alpn", stream.alpn or "")
        kv.set("tls.sni", stream.sni or "")
        return UpgradeOutcome(new)
