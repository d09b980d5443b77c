"""A real vaned whose file descriptors run out (a low RLIMIT_NOFILE, clients holding
connections to a data-plane listener): management keeps answering on the unix socket and over
HTTP, the log stays bounded, and the data plane serves again once the clients are gone."""

from __future__ import annotations

import resource
import socket
import time

import httpx
import pytest

from tests.support.config import rule
from tests.support.net import connect, free_ports, wait_until
from vane.mgmt.fds import FdReserve, raise_nofile_limit

pytestmark = pytest.mark.timeout(60)

NOFILE = 40  # vaned needs about a dozen descriptors once booted
TOKEN = "5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b"
ACCEPT_FAILED = r"accept failed: Too many open files"


def limit_descriptors() -> None:
    """In the child before exec: soft and hard limit, so vaned cannot raise its own."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def served(port: int) -> bool:
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/", headers={"Host": "app.test"}, timeout=2)
    except httpx.HTTPError:
        return False
    return r.status_code == 200 and r.text == "ok"


def mgmt_ping(port: int) -> bool:
    r = httpx.post(f"http://127.0.0.1:{port}/v1/ping", json={}, headers={"Authorization": f"Bearer {TOKEN}"},
                   timeout=5)
    return r.status_code == 200 and r.json()["result"]["pong"]


def test_management_answers_and_the_log_stays_bounded_without_descriptors(lab):
    port, mport = free_ports(2)
    d = lab.vaned({"10-web.json": rule("web", {"respond": {"input": {"body": "ok"}}}, listen=f"127.0.0.1:{port}",
                                       match={"req.host": "app.test"})},
                  env={"VANE_SEC_MAX_CONNECTIONS_PER_IP": "10000", "VANE_MGMT_HTTP_PORT": str(mport),
                       "VANE_MGMT_HTTP_TOKEN": TOKEN},
                  preexec_fn=limit_descriptors)
    d.wait_listening(port)
    assert served(port) and mgmt_ping(mport) and d.cli_json("stats")["pid"] == d.pid
    clients: list[socket.socket] = []
    try:
        for _ in range(NOFILE + 20):  # the kernel completes them; vaned runs out before the last
            clients.append(connect(port))
        first = d.wait_log(ACCEPT_FAILED, timeout=5)
        exhausted_at = time.monotonic()
        for _ in range(3):
            res = d.cli("ping")
            assert res.returncode == 0 and res.stdout.startswith("pong"), (res.returncode, res.stdout, res.stderr)
            assert d.cli_json("stats")["connections"]["active"] >= NOFILE // 2
            assert mgmt_ping(mport)
        while time.monotonic() - exhausted_at < 3.0:  # the old loop logged ten lines a second
            assert d.cli("ping").returncode == 0
        assert d.count(ACCEPT_FAILED) == 1, d.stderr
        assert len(d.lines) - first < 10, d.stderr
        assert "Traceback" not in d.stderr
    finally:
        for c in clients:
            c.close()
    assert wait_until(lambda: served(port), timeout=10), d.stderr
    assert d.cli("ping").returncode == 0 and mgmt_ping(mport)
    assert "Traceback" not in d.stderr


def test_the_reserve_spends_and_takes_back_descriptors():
    reserve = FdReserve(3)
    try:
        assert len(reserve) == 3
        assert reserve.release() and reserve.release() and reserve.release()
        assert not reserve.release()
        reserve.refill()
        assert len(reserve) == 3
    finally:
        reserve.close()
    assert len(reserve) == 0
    reserve.refill()  # a connection that ends after the servers stopped takes nothing back
    assert len(reserve) == 0


def test_raise_nofile_limit_lifts_the_soft_limit_to_the_hard_one():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        old, new = raise_nofile_limit(ceiling=hard)
        assert old == min(256, hard) and new == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
        assert raise_nofile_limit(ceiling=hard) == (hard, hard)  # nothing left to raise
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
