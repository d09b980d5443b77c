"""When to issue and renew ACME certificates, and swapping them into the live listeners.

``AcmeManager`` owns one ``CertSlot`` per name set (what the TLS listeners serve: the stored
certificate, else a self-signed fallback) and one background greenlet that runs the orders,
one at a time, never on a connection's path. A failed order is retried with exponential
backoff (the CA's ``Retry-After`` when longer); a certificate is renewed at
``renew_before_days`` before it expires (default: a third of its lifetime).
"""

from __future__ import annotations

import datetime
import logging
import time
from typing import Any, Callable

import gevent
from cryptography.hazmat.primitives import serialization
from gevent.event import Event

from vane.net.tls.certs import CertSlot, ContextCache, TLSConfigError, context_from_pem

from .challenges import ChallengeBoard, self_signed
from .issuer import ARI_RETRY, IssueError, Issuer
from .plan import AcmePlan, AcmeSettings
from .store import AcmeStore, StoredCert

__all__ = ["AcmeManager", "retry_delay", "renewal_time"]

log = logging.getLogger("vane.acme")

RETRY_FIRST = 60.0          # seconds after the first failure; doubled after each next one
RETRY_MAX = 6 * 3600.0
IDLE_CHECK = 3600.0         # re-examine every certificate at least this often
MAX_SETS = 10000


def retry_delay(failures: int, retry_after: float | None = None) -> float:
    """Seconds until the next attempt after ``failures`` failed ones in a row (1, 2, ...)."""
    delay = min(RETRY_FIRST * 2 ** max(0, failures - 1), RETRY_MAX)
    return max(delay, retry_after or 0.0)


def renewal_time(not_before: float, not_after: float, renew_before_days: float | None) -> float:
    """When to renew: ``renew_before_days`` before the end, else when a third of the lifetime is
    left; never earlier than half of the lifetime (a setting longer than a short-lived
    certificate's life would renew it in a loop)."""
    lifetime = max(0.0, not_after - not_before)
    before = renew_before_days * 86400.0 if renew_before_days is not None else lifetime / 3
    return not_after - min(before, lifetime / 2)


def _iso(ts: float | None) -> str | None:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat() if ts else None


class _CertState:
    """One name set: its slot, what is stored, and the bookkeeping of its orders."""

    def __init__(self, names: tuple[str, ...], slot: CertSlot, stored: StoredCert | None) -> None:
        self.names = names
        self.slot = slot
        self.stored = stored
        self.failures = 0
        self.last_error: str | None = None
        self.last_attempt: float | None = None
        self.next_check = 0.0
        self.issued = 0
        self.ari_at: float | None = None  # the CA's suggested renewal time (ARI)
        self.ari_next = 0.0               # when to ask it again


class AcmeManager:
    """Owns the ACME certificates of one process: slots, the order greenlet, state on disk."""

    def __init__(self, state_dir: str, cache: ContextCache, board: ChallengeBoard,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = AcmeStore(state_dir)
        self.cache = cache
        self.board = board
        self.clock = clock
        self.settings: AcmeSettings | None = None
        self._issuer: Issuer | None = None
        self._states: dict[tuple[str, ...], _CertState] = {}
        self._wanted: list[tuple[str, ...]] = []
        self._wake = Event()
        self._loop: gevent.Greenlet | None = None
        self.on_issued: Callable[[tuple[str, ...]], None] | None = None  # e.g. tell the workers

    # -- what the listeners serve (link time; may run in a worker thread) -----------------------

    def slot(self, names: tuple[str, ...]) -> CertSlot:
        """The slot serving ``names``: the stored certificate if it is still valid, else a fallback."""
        names = tuple(names)
        state = self._states.get(names)
        if state is None:
            if len(self._states) >= MAX_SETS:
                raise TLSConfigError(names[0], f"more than {MAX_SETS} ACME certificates")
            stored = self._stored(names)
            entry = self._load(stored) if stored is not None else None
            if entry is None:
                stored = None
                entry = self._fallback(names)
            state = self._states.setdefault(names, _CertState(names, CertSlot(names, entry), stored))
            self._describe(state)
        return state.slot

    def refresh(self, names: tuple[str, ...]) -> bool:
        """Load ``names``' certificate from the state dir again (another process issued it)."""
        state = self._states.get(tuple(names))
        stored = self._stored(tuple(names))
        if state is None or stored is None:
            return False
        entry = self._load(stored)
        if entry is None:
            return False
        state.stored = stored
        state.slot.swap(entry)
        state.last_error = None
        self._describe(state)
        return True

    def refresh_all(self) -> int:
        """``refresh`` every name set; how many changed."""
        return sum(1 for names in list(self._states) if self.refresh(names))

    def stored_sets(self) -> list[tuple[str, ...]]:
        return [names for names, state in self._states.items() if state.stored is not None]

    def _stored(self, names: tuple[str, ...]) -> StoredCert | None:
        stored = self.store.load(names)
        return stored if stored is not None and stored.not_after > self.clock() else None

    def _load(self, stored: StoredCert) -> Any:
        try:
            return self.cache.load(stored.cert_path, stored.key_path)
        except TLSConfigError as exc:
            log.warning("stored ACME certificate for %s cannot be used: %s", ", ".join(stored.meta["names"]), exc)
            return None

    @staticmethod
    def _fallback(names: tuple[str, ...]) -> Any:
        cert, key = self_signed(names)
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return context_from_pem(cert_pem, key_pem, "(self-signed fallback)", "(self-signed fallback)")

    # -- what the config asks for (on the hub, after a boot or reload) --------------------------

    def want(self, plan: AcmePlan | None) -> None:
        """Issue what ``plan`` names and lacks; a change of settings retries failed orders now."""
        if plan is None:
            self._wanted = []
            return
        if plan.settings != self.settings:
            self.settings = plan.settings
            self._issuer = Issuer(plan.settings, self.store, self.board)
            for state in self._states.values():
                state.failures, state.next_check = 0, 0.0
        before = set(self._wanted)
        self._wanted = [n for n in plan.name_sets if n in self._states]
        for names in self._wanted:
            state = self._states[names]
            if state.stored is None and names not in before:
                log.info("serving a self-signed certificate for %s until its ACME certificate is issued",
                         ", ".join(names))
            self._describe(state)
        if self._loop is None:
            self._loop = gevent.spawn(self._run)
        self._wake.set()

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.kill(block=False)
            self._loop = None

    # -- the order greenlet ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                self._wake.clear()
                for names in list(self._wanted):
                    state = self._states[names]
                    if state.next_check <= self.clock():
                        self._examine(state)
                now = self.clock()
                checks = [self._states[n].next_check for n in self._wanted]
                wait = min([IDLE_CHECK] + [c - now for c in checks])
            except Exception:  # noqa: BLE001 - the loop must outlive any bug in one attempt
                log.exception("ACME certificate loop failed; retrying in %ss", RETRY_FIRST)
                wait = RETRY_FIRST
            self._wake.wait(timeout=max(0.0, wait))

    def _examine(self, state: _CertState) -> None:
        settings = self.settings
        assert settings is not None and self._issuer is not None
        stored, now = state.stored, self.clock()
        if stored is not None and stored.meta.get("directory") == settings.directory:
            renew_at = renewal_time(stored.not_before, stored.not_after, settings.renew_before_days)
            if now < renew_at and now >= state.ari_next:  # the CA may want it sooner (RFC 9773)
                pem = stored.leaf.public_bytes(serialization.Encoding.PEM)
                state.ari_at, state.ari_next = self._issuer.suggested_renewal(pem)
            if state.ari_at is not None:
                renew_at = min(renew_at, state.ari_at)
            if now < renew_at:
                state.next_check = min(renew_at, state.ari_next)
                self._describe(state)
                return
        self._issue(state, renewing=stored is not None)

    def _issue(self, state: _CertState, renewing: bool) -> None:
        names, label = state.names, ", ".join(state.names)
        state.last_attempt = started = self.clock()
        state.slot.status["state"] = "renewing" if renewing else "issuing"
        try:
            fullchain, key_pem = self._issuer.issue(names)  # type: ignore[union-attr]
            stored = self.store.save(names, fullchain, key_pem, self.settings.directory)  # type: ignore[union-attr]
            entry = self.cache.load(stored.cert_path, stored.key_path)
        except (IssueError, TLSConfigError, OSError) as exc:
            state.failures += 1
            state.last_error = str(exc)
            delay = retry_delay(state.failures, getattr(exc, "retry_after", None))
            state.next_check = self.clock() + delay
            self._describe(state)
            log.warning("ACME certificate for %s not %s: %s; %s; next attempt in %ds", label,
                        "renewed" if renewing else "issued", exc,
                        "the current certificate stays" if state.stored is not None
                        else "serving a self-signed fallback", delay)
            return
        state.stored, state.failures, state.last_error = stored, 0, None
        state.ari_at, state.ari_next = None, 0.0
        state.issued += 1
        state.slot.swap(entry)
        state.ari_next = self.clock() + ARI_RETRY
        state.next_check = min(state.ari_next, renewal_time(stored.not_before, stored.not_after,
                                                            self.settings.renew_before_days))
        self._describe(state)
        log.info("ACME certificate for %s %s: serial %s, not after %s, in %.1fs", label,
                 "renewed" if renewing else "issued", stored.serial, _iso(stored.not_after),
                 self.clock() - started)
        if self.on_issued is not None:
            self.on_issued(names)

    def _describe(self, state: _CertState) -> None:
        """What ``vane get certs`` shows besides the certificate itself."""
        wanted = state.names in self._wanted
        status: dict[str, Any] = {
            "source": "acme", "names": list(state.names),
            "fallback": state.stored is None,
            "state": ("valid" if state.stored is not None else ("error" if state.last_error else "pending")),
            "last_error": state.last_error, "failures": state.failures,
            "last_attempt": _iso(state.last_attempt),
            "next_attempt": _iso(state.next_check) if wanted and state.next_check else None,
            "directory": self.settings.directory if self.settings else None,
        }
        if state.stored is not None and self.settings is not None:
            renew_at = renewal_time(state.stored.not_before, state.stored.not_after, self.settings.renew_before_days)
            status["next_renewal"] = _iso(min(renew_at, state.ari_at) if state.ari_at else renew_at)
        state.slot.status = status

    def snapshot(self) -> list[dict[str, Any]]:
        return [state.slot.info for names, state in self._states.items() if names in self._wanted]
