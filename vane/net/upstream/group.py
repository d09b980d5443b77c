"""An upstream group's live state: its backends, their health, and the choice among them.

``Group`` is built from a compiled group definition (``vane.compile.upstreams.UpstreamDef``,
read by attribute) when a graph is linked, and kept by the daemon's ``UpstreamRegistry``
across reloads while the definition's digest is unchanged. What decides whether a backend
takes a new request:

- its admin state, set at run time (``vane upstream drain|disable|enable``): ``draining``
  takes no new requests while its requests in flight finish; ``disabled`` gets no traffic at
  all and its health checks stop counting;
- active health checks (``health``): ``fall`` failed checks in a row mark it down, ``rise``
  passed ones up again;
- passive outlier ejection (``passive``): ``max_fails`` failures in a row of the kinds in
  ``errors`` (``connect``, ``timeout``, ``5xx``) eject it for ``fail_timeout`` seconds.

Backups take requests only while no primary can. The choice itself is the strategy in
``vane.net.upstream.balance`` over the *view* (the backends that may take requests now),
rebuilt only when some backend's state changes. When the view is empty, ``choose`` returns
None at once and the caller answers 503 with ``Retry-After``.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Iterable

from vane.net.dial import split_target
from vane.net.http.errors import UpstreamConnectError, UpstreamError, UpstreamProtocolError, UpstreamTimeout
from vane.net.upstream.balance import LeastConn, Ring, Rotation, TwoChoices, key_hash
from vane.net.upstream.url import UpstreamURLError, parse_upstream

__all__ = ["ADMIN_STATES", "DISABLED", "DRAINING", "ENABLED", "Backend", "Group", "GroupError", "NoBackend",
           "anonymous", "passive_kind"]

log = logging.getLogger("vane.upstream")

ENABLED, DRAINING, DISABLED = "enabled", "draining", "disabled"
ADMIN_STATES = (ENABLED, DRAINING, DISABLED)
CHECK_RESULTS = ("ok", "fail", "timeout")
RING_POINTS = 100                   # per unit of weight (the compiler bounds the total)
MAX_RETRY_AFTER = 300

_STRATEGIES = {"round_robin": Rotation, "random": TwoChoices, "least_conn": LeastConn, "hash": Rotation}


class GroupError(ValueError):
    """A backend that cannot be used; ``where`` is the (file, pointer) that names it."""

    def __init__(self, message: str, where: tuple[str, str]) -> None:
        super().__init__(message)
        self.where = where


class NoBackend(UpstreamError):
    """No backend of the group can take the request now (answered 503 with Retry-After)."""

    status = 503

    def __init__(self, group: "Group") -> None:
        super().__init__(f"no backend of upstream group {group.name} is available")
        self.retry_after = group.retry_after()


def passive_kind(exc: BaseException) -> str | None:
    """The passive-health kind of an upstream failure: "connect", "timeout" or None (not the
    backend's fault: the client's share was in use, or our own pool had no free slot)."""
    if isinstance(exc, UpstreamTimeout):
        return None if getattr(exc, "local", False) else "timeout"
    if isinstance(exc, (UpstreamConnectError, UpstreamProtocolError)):
        return "connect"
    return None


class Backend:
    """One backend of a group and everything known about it."""

    __slots__ = ("group", "index", "address", "label", "weight", "backup", "upstream", "host", "port",
                 "admin", "healthy", "ejected_until", "fails", "active", "eligible", "in_view", "lc_seq",
                 "check_oks", "check_fails", "last_check", "latency", "last_result", "last_error", "results")

    def __init__(self, group: "Group", index: int, address: str, weight: int, backup: bool) -> None:
        self.group = group
        self.index = index
        self.address = address
        self.label = address
        self.weight = weight
        self.backup = backup
        self.upstream: Any = None       # the parsed URL (HTTP groups)
        self.host = ""                  # host and port (L4 groups)
        self.port = 0
        self.admin = ENABLED
        self.healthy = True             # by active checks (optimistic until they say otherwise)
        self.ejected_until = 0.0        # passive ejection ends then (monotonic); 0: not ejected
        self.fails = 0                  # passive failures in a row
        self.active = 0                 # requests (or connections) in flight
        self.eligible = True            # may take a new request now
        self.in_view = False
        self.lc_seq = 0
        self.check_oks = 0              # consecutive passed / failed checks
        self.check_fails = 0
        self.last_check: float | None = None
        self.latency: float | None = None
        self.last_result: str | None = None
        self.last_error: str | None = None
        self.results = dict.fromkeys(CHECK_RESULTS, 0)

    def begin(self) -> None:
        """A request (L4: a connection) to this backend started."""
        self.active += 1
        lc = self.group.lc
        if lc is not None:
            lc.changed(self)

    def end(self) -> None:
        """It ended."""
        if self.active:
            self.active -= 1
            lc = self.group.lc
            if lc is not None:
                lc.changed(self)

    @property
    def state(self) -> str:
        """``up``, ``down``, ``draining`` or ``disabled``."""
        if self.admin != ENABLED:
            return self.admin
        return "up" if self.healthy and not self.ejected_until else "down"


class _Definition:
    """What a group is built from when it has no compiled definition (templated L4 targets)."""

    def __init__(self, items: Iterable[Any], balance: str) -> None:
        self.name = "(templated)"
        self.digest = ""
        self.layer = "l4"
        self.backends = tuple(_Item(item) for item in items)
        self.balance = balance
        self.health = None
        self.passive = {"max_fails": 3, "fail_timeout": 10.0, "errors": ["connect", "timeout"]}
        self.file = ""
        self.pointer = ""

    def where(self, suffix: str = "") -> tuple[str, str]:
        return "", ""


class _Item:
    __slots__ = ("address", "weight", "backup", "pointer")

    def __init__(self, item: Any) -> None:
        if isinstance(item, dict):
            self.address = str(item.get("address", ""))
            self.weight = int(item.get("weight") or 1)
            self.backup = bool(item.get("backup", False))
        else:
            self.address, self.weight, self.backup = str(item), 1, False
        self.pointer = ""


class Group:
    """One upstream group's live state (see the module docstring): backends, health, admin
    states, requests in flight, and the balance strategy over the backends that may take a
    request now."""

    def __init__(self, defn: Any, config_dir: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name: str = defn.name
        self.digest: str = defn.digest
        self.layer: str = defn.layer
        self.balance: str = defn.balance
        self.health: dict | None = defn.health
        self.config_dir = config_dir
        passive = defn.passive
        self.max_fails = int(passive["max_fails"])
        self.fail_timeout = float(passive["fail_timeout"])
        self.counted = frozenset(passive["errors"])
        self._clock = clock
        backends = []
        for i, item in enumerate(defn.backends):
            b = Backend(self, i, item.address, item.weight, item.backup)
            try:
                if self.layer == "l7":
                    b.upstream = parse_upstream(item.address)
                    b.label = b.upstream.name
                else:
                    b.host, b.port = split_target(item.address)
            except (UpstreamURLError, ValueError) as exc:
                raise GroupError(str(exc), (defn.file, item.pointer)) from None
            backends.append(b)
        self.backends: tuple[Backend, ...] = tuple(backends)
        self.primaries = tuple(b for b in backends if not b.backup)
        self.backups = tuple(b for b in backends if b.backup)
        self.rings: tuple[Ring, Ring] | None = None
        if self.balance == "hash":
            self.rings = (Ring.build(self.primaries, [b.address for b in self.primaries], RING_POINTS),
                          Ring.build(self.backups, [b.address for b in self.backups], RING_POINTS))
        self.lc: LeastConn | None = None
        self.ring: Ring | None = None       # the hash ring over the view
        self._view: tuple[Backend, ...] = ()
        self._strategy: Any = None
        self._pick: Callable[[], Backend] | None = None
        self._dirty = True
        self._expiry = 0.0                  # earliest end of a passive ejection; 0: none
        self.checker: Any = None            # the health checker while the group is served
        self.retired = False

    # -- choosing ------------------------------------------------------------------------------

    def choose(self, key: str | None = None) -> Backend | None:
        """The backend for a new request (``key``: the resolved ``hash_key``); None when no
        backend can take it."""
        if self._expiry and self._clock() >= self._expiry:
            self._expire()
        if self._dirty:
            self._rebuild()
        pick = self._pick
        if pick is None:
            return None
        ring = self.ring
        if ring is not None and key:
            return ring.pick(key_hash(key))
        return pick()

    def choose_other(self, key: str | None, tried: list[Backend]) -> Backend | None:
        """A retry: a backend not in ``tried`` (the view first, then backups when every
        primary has failed this request); None when there is none."""
        if self._dirty:
            self._rebuild()
        ring = self.ring
        if ring is not None and key:
            found = ring.pick(key_hash(key), tried)
            if found is not None:
                return found
        candidates = [b for b in self._view if b not in tried]
        if not candidates and self._view and not self._view[0].backup:
            candidates = [b for b in self.backups if b.eligible and b not in tried]
        best = None
        for b in candidates:            # the least busy per unit of weight
            if best is None or b.active * best.weight < best.active * b.weight:
                best = b
        return best

    def _rebuild(self) -> None:
        primaries = tuple(b for b in self.primaries if b.eligible)
        view = primaries or tuple(b for b in self.backups if b.eligible)
        for b in self.backends:
            b.in_view = False
        for b in view:
            b.in_view = True
        old = self._strategy
        start = getattr(old, "pos", 0) if old is not None else 0
        self._view = view
        self._strategy = strategy = _STRATEGIES[self.balance](view, start) if view else None
        self._pick = strategy.pick if strategy is not None else None
        self.lc = strategy if isinstance(strategy, LeastConn) else None
        self.ring = None
        if self.rings is not None and view:
            full = self.rings[0] if primaries else self.rings[1]
            tier = self.primaries if primaries else self.backups
            self.ring = full if len(view) == len(tier) else full.only(frozenset(view))
        self._dirty = False

    def _update(self, b: Backend) -> None:
        eligible = b.admin == ENABLED and b.healthy and not b.ejected_until
        if eligible != b.eligible:
            b.eligible = eligible
            self._dirty = True

    # -- passive health --------------------------------------------------------------------------

    def failed(self, b: Backend, kind: str | None) -> None:
        """A request to ``b`` failed with ``kind`` ("connect", "timeout", "5xx", None)."""
        if kind is None or kind not in self.counted or not self.max_fails:
            return
        b.fails += 1
        if b.fails >= self.max_fails and not b.ejected_until:
            until = self._clock() + self.fail_timeout
            b.ejected_until = until
            b.fails = 0
            if not self._expiry or until < self._expiry:
                self._expiry = until
            log.warning("upstream group %s: backend %s ejected for %gs after %d failures in a row (%s)",
                        self.name, b.label, self.fail_timeout, self.max_fails, kind,
                        extra={"upstream": self.name, "backend": b.label})
            self._update(b)

    def answered(self, b: Backend, status: int) -> None:
        """``b`` answered with ``status``: a 5xx counts as a failure when ``errors`` has "5xx"."""
        if status >= 500 and "5xx" in self.counted:
            self.failed(b, "5xx")
        elif b.fails:
            b.fails = 0

    def succeeded(self, b: Backend) -> None:
        """A connection to ``b`` opened (L4): its failures in a row start again from 0."""
        if b.fails:
            b.fails = 0

    def _expire(self) -> None:
        now = self._clock()
        nxt = 0.0
        for b in self.backends:
            until = b.ejected_until
            if not until:
                continue
            if until <= now:
                b.ejected_until = 0.0
                self._update(b)
            elif not nxt or until < nxt:
                nxt = until
        self._expiry = nxt

    def retry_after(self) -> int:
        """Seconds after which a backend may be back, for ``Retry-After`` (at least 1)."""
        now = self._clock()
        soonest = math.inf
        health = self.health
        for b in self.backends:
            if b.admin != ENABLED:
                continue
            if b.ejected_until:
                soonest = min(soonest, b.ejected_until - now)
            elif not b.healthy and health is not None:
                soonest = min(soonest, health["interval"] * health["rise"])
        if soonest == math.inf:
            soonest = self.fail_timeout
        return max(1, min(MAX_RETRY_AFTER, math.ceil(soonest)))

    # -- active health ---------------------------------------------------------------------------

    def check_done(self, b: Backend, result: str, latency: float, error: str | None) -> None:
        """One active check of ``b`` ended: ``result`` "ok", "fail" or "timeout"."""
        if b.admin == DISABLED or self.health is None:
            return                      # a disabled backend's checks do not count
        b.last_check = time.time()
        b.latency = latency
        b.last_result = result
        b.last_error = error
        b.results[result] += 1
        health = self.health
        if result == "ok":
            b.check_fails = 0
            b.check_oks += 1
            if not b.healthy and b.check_oks >= health["rise"]:
                b.healthy = True
                log.info("upstream group %s: backend %s is up (%d checks passed)", self.name, b.label,
                         b.check_oks, extra={"upstream": self.name, "backend": b.label})
                self._update(b)
        else:
            b.check_oks = 0
            b.check_fails += 1
            if b.healthy and b.check_fails >= health["fall"]:
                b.healthy = False
                log.warning("upstream group %s: backend %s is down (%d checks failed: %s)", self.name, b.label,
                            b.check_fails, error or result, extra={"upstream": self.name, "backend": b.label})
                self._update(b)

    # -- admin -----------------------------------------------------------------------------------

    def set_admin(self, b: Backend, admin: str) -> None:
        """``enabled``, ``draining`` or ``disabled``. Enabling a disabled backend of a group with
        health checks takes ``rise`` passed checks before it gets traffic again."""
        if admin not in ADMIN_STATES:
            raise ValueError(f"unknown admin state {admin!r}")
        previous = b.admin
        b.admin = admin
        if admin == ENABLED and previous == DISABLED and self.health is not None:
            b.healthy = False
            b.check_oks = b.check_fails = 0
        log.info("upstream group %s: backend %s %s (was %s)", self.name, b.label, admin, previous,
                 extra={"upstream": self.name, "backend": b.label})
        self._update(b)
        if self.checker is not None and admin == ENABLED and previous == DISABLED:
            self.checker.check_now(b)

    def find(self, text: str) -> Backend:
        """The backend ``text`` names: its address as configured, its canonical URL, or its
        ``host:port``; LookupError when it names none or several."""
        found = [b for b in self.backends if text in (b.address, b.label)]
        if not found:
            found = [b for b in self.backends if _authority(b) == text]
        if len(found) == 1:
            return found[0]
        names = ", ".join(b.label for b in (found or self.backends))
        if found:
            raise LookupError(f'"{text}" names several backends of upstream group {self.name}: {names}')
        raise LookupError(f'no backend "{text}" in upstream group {self.name} (backends: {names})')

    # -- reporting -------------------------------------------------------------------------------

    def snapshot(self) -> list[dict]:
        now = self._clock()
        rows = []
        for b in self.backends:
            rows.append({
                "group": self.name, "backend": b.label, "state": b.state, "admin": b.admin,
                "weight": b.weight, "backup": b.backup, "active": b.active, "balance": self.balance,
                "health": None if self.health is None else ("up" if b.healthy else "down"),
                "last_check": b.last_check, "latency_ms": None if b.latency is None else round(b.latency * 1000, 3),
                "check": b.last_result, "error": b.last_error,
                "check_failures": b.check_fails, "check_successes": b.check_oks, "checks": dict(b.results),
                "failures": b.fails, "ejected_secs": round(max(0.0, b.ejected_until - now), 3) if b.ejected_until
                else 0.0,
            })
        return rows


def _authority(b: Backend) -> str:
    up = b.upstream
    if up is None:
        return f"[{b.host}]:{b.port}" if ":" in b.host else f"{b.host}:{b.port}"
    if up.scheme == "unix":
        return up.path
    return f"[{up.host}]:{up.port}" if ":" in up.host else f"{up.host}:{up.port}"


def anonymous(items: Iterable[Any], balance: str) -> Group:
    """A group for a list of targets known only at run time (templated L4 ``target``): passive
    health only, not registered, never in metrics."""
    return Group(_Definition(items, balance or "round_robin"))
