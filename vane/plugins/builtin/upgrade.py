"""``upgrade`` (DESIGN.md §6): a layer transition; the walk goes on at ``output.next``.

``tls``: terminate TLS with the node's certificates (relative paths resolve against the config
dir; contexts built when the graph is linked,
taken from the daemon-scoped cache so session tickets survive reloads); the next layer is
``l4+`` with the negotiated ``tls.*`` keys. ``http``: serve HTTP/1.1 or HTTP/2 on the stream;
every request walks ``next`` with its own L7 context. ``quic``: accept a QUIC connection on a
UDP session with the node's certificates (chosen by SNI); the next layer is ``l4+``, ALPN
``h3``, and its ``upgrade http`` serves HTTP/3.
"""

from __future__ import annotations

import logging

from vane.config.load import resolve_path
from vane.engine.outcome import FINISHED, ServeHttp
from vane.engine.outcome import Upgrade as UpgradeOutcome
from vane.engine.plugin import LinkEnv, Terminator

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
        self.quic = None
        if self.protocol == "quic":
            from vane.net.quic.certs import QuicCerts
            services = env.services
            self.quic = QuicCerts([(c["cert"], c["key"]) for c in raw["certs"]],
                                  cache=services.tls_cache if services is not None else None)
        if self.protocol == "tls":
            from vane.net.tls.server import ServerTLS
            services = env.services
            here = env.config_dir or "."      # relative paths resolve against the config dir
            certs = [(resolve_path(here, c["cert"]), resolve_path(here, c["key"])) if "cert" in c
                     else _acme_slot(services, tuple(c["acme"])) for c in raw["certs"]]
            self.tls = ServerTLS(certs, tuple(raw.get("alpn") or ("h2", "http/1.1")),
                                 cache=services.tls_cache if services is not None else None,
                                 handshake_timeout=env.settings.sec_handshake_timeout,
                                 challenges=services.acme_challenges if services is not None else None)

    def terminate(self, ctx, args):
        if self.protocol == "http":
            return ServeHttp(ctx, self.node, self.env.graph)
        services = self.env.services
        floor = services.floor if services is not None else None
        if self.quic is not None:
            return self._quic(ctx, floor)
        if floor is not None and not floor.allow_handshake(ctx.kv.get("conn.ip")):
            ctx.reset_client()
            return FINISHED
        try:
            stream = self.tls.accept(ctx.conn.bare())  # the TLS stream has watchers of its own
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

    def _quic(self, ctx, floor):
        """A UDP session: never reset ``ctx.sock``, the listener's own socket."""
        from vane.net.quic.session import QuicLimits, QuicSession
        s = self.env.settings
        limits = QuicLimits(handshake_timeout=s.sec_handshake_timeout, idle_timeout=s.sec_keepalive_timeout,
                            max_streams=s.sec_h2_max_streams, retry_threshold=s.sec_quic_retry_threshold)
        session = QuicSession.accept(ctx.udp, ctx.sock, self.quic, limits)
        if session is None:     # not a new connection, or asked to prove its address first (Retry)
            ctx.trajectory.note_error("quic: no connection established")
            return FINISHED
        # counted once the Initial is one to handshake with: a Retry costs the address nothing
        if floor is not None and not floor.allow_handshake(ctx.kv.get("conn.ip")):
            return FINISHED
        services = self.env.services
        draining = services.draining.is_set if services is not None else (lambda: False)
        if not session.handshake(draining):
            ctx.trajectory.note_error("quic: no connection established")
            return FINISHED
        new = ctx.upgraded(session)
        kv = new.kv
        kv.set("tls.version", "TLSv1.3")
        kv.set("tls.cipher", "")
        kv.set("tls.alpn", session.alpn or "")
        kv.set("tls.sni", (session.sni or "").lower())
        return UpgradeOutcome(new)
