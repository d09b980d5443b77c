"""Active health checks of one upstream group (config ``health``).

``Checker`` owns one greenlet per group. Every ``interval`` seconds it checks each backend
that is not disabled, each check in a short-lived greenlet of a bounded pool and bounded as a
whole by ``timeout`` (connect, TLS, request and response head together), so a backend that
hangs costs one check's timeout and never delays the others or the hub. HTTP groups send
``GET path`` over HTTP/1.1 (TLS for ``https://`` backends, verified unless ``verify`` is
false) and expect ``expect_status`` (default any 2xx or 3xx); L4 groups open a TCP
connection. Results go to ``Group.check_done``; the loop logs and carries on whatever a
check raises, so it never dies silently.
"""

from __future__ import annotations

import logging
import os
import random
import time
from typing import Any

import gevent
from gevent.pool import Pool

from vane.net.dial import tcp_connect
from vane.net.h1.client import H1ClientConnection
from vane.net.http.errors import UpstreamError, UpstreamTimeout
from vane.net.http.message import Headers, Request
from vane.net.upstream.connect import connect
from vane.net.upstream.endpoint import EndpointSpec
from vane.net.upstream.group import DISABLED, Backend, Group

__all__ = ["Checker"]

log = logging.getLogger("vane.upstream")

MAX_PARALLEL = 64               # checks of one group at once
MAX_CHECK_HEADER = 16384        # a check reads the status line and the head, nothing more
USER_AGENT = b"vane-health-check"


class Checker:
    """The health-check loop of one group while the daemon serves it."""

    def __init__(self, group: Group) -> None:
        health = group.health
        assert health is not None
        self.group = group
        self.interval = float(health["interval"])
        self.timeout = float(health["timeout"])
        path, _, query = str(health.get("path") or "/").partition("?")
        self.path, self.query = path, query
        expect = health.get("expect_status")
        self.expect = frozenset(expect) if expect else None
        self.host = health.get("host")
        ca_file = health.get("ca_file")
        if ca_file and group.config_dir and not os.path.isabs(ca_file):
            ca_file = os.path.join(group.config_dir, ca_file)
        verify = health.get("verify", True)
        self.specs: list[EndpointSpec | None] = [
            EndpointSpec(b.upstream, "h1", verify, ca_file, self.host) if b.upstream is not None else None
            for b in group.backends]
        self._pool = Pool(min(max(1, len(group.backends)), MAX_PARALLEL))
        self._greenlet: Any = None

    def start(self) -> None:
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None
        self._pool.kill(block=False)

    @property
    def running(self) -> bool:
        return self._greenlet is not None and not self._greenlet.dead

    def check_now(self, b: Backend) -> None:
        """Check one backend now (a disabled one enabled again), outside the rounds."""
        if self._greenlet is not None and not self._pool.full():
            self._pool.spawn(self._check, b)

    # -- the loop ----------------------------------------------------------------------------------

    def _run(self) -> None:
        gevent.sleep(random.random() * min(self.interval, 1.0) * 0.1)  # groups do not check in lockstep
        while True:
            started = time.monotonic()
            try:
                self.round()
            except Exception:  # noqa: BLE001 - the loop outlives any one round
                log.exception("upstream group %s: health-check round failed", self.group.name)
            gevent.sleep(max(0.01, self.interval - (time.monotonic() - started)))

    def round(self) -> None:
        """Check every backend that is not disabled, at once; return when all are done."""
        for b in self.group.backends:
            if b.admin != DISABLED:
                self._pool.spawn(self._check, b)
        self._pool.join()

    def _check(self, b: Backend) -> None:
        try:
            self._check_one(b)
        except Exception:  # noqa: BLE001 - a check greenlet never dies unreported
            log.exception("upstream group %s: health check of %s failed", self.group.name, b.label)

    def _check_one(self, b: Backend) -> None:
        started = time.monotonic()
        timer = gevent.Timeout(self.timeout)
        timer.start()
        try:
            result, error = self.probe(b)
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            result, error = "timeout", f"no answer within {self.timeout:g}s"
        except UpstreamTimeout as exc:
            result, error = "timeout", str(exc)
        except (UpstreamError, OSError) as exc:
            result, error = "fail", str(exc) or type(exc).__name__
        except Exception as exc:  # noqa: BLE001 - a check that breaks is a failed check
            log.debug("health check of %s failed", b.label, exc_info=True)
            result, error = "fail", f"{type(exc).__name__}: {exc}"
        finally:
            timer.close()
        self.group.check_done(b, result, time.monotonic() - started, error)

    def probe(self, b: Backend) -> tuple[str, str | None]:
        """One check of ``b``: ("ok", None) or ("fail", why). Raises on connection errors."""
        spec = self.specs[b.index]
        if spec is None:
            tcp_connect(b.host, b.port, self.timeout).close()
            return "ok", None
        stream, _ = connect(spec, self.timeout)
        try:
            conn = H1ClientConnection(stream, self.timeout, self.timeout, MAX_CHECK_HEADER)
            host = self.host or spec.upstream.authority
            headers = Headers([(b"host", host.encode("latin-1")), (b"user-agent", USER_AGENT),
                               (b"connection", b"close")])
            path = spec.upstream.target(self.path)
            resp = conn.request(Request("GET", path, self.query, "1.1", headers), headers, self.timeout)
            status = resp.status
        finally:
            stream.close()
        ok = status in self.expect if self.expect is not None else 200 <= status < 400
        return ("ok", None) if ok else ("fail", f"status {status}")
