"""``ratelimit`` in a real vaned: its own buckets, and buckets in a real Redis shared by two
daemons, with the daemon's own buckets standing in while Redis is away."""

from __future__ import annotations

import httpx
import pytest

from tests.support.config import rule
from tests.support.net import free_ports, wait_until

pytestmark = pytest.mark.timeout(90)


def limited(port: int, burst: int, **store: str) -> dict:
    """A rule on ``port``: one bucket for every client (key "all"), ``burst`` tokens, refilled
    at 0.001/s (so nothing refills during a test); 200 when allowed, 429 when denied."""
    flow = {"ratelimit": {"input": {"key": "all", "rate": 0.001, "burst": burst, **store}, "output": {
        "allow": {"respond": {"input": {"status": 200, "body": "ok"}}},
        "deny": {"respond": {"input": {"status": 429, "body": "slow down"}}}}}}
    return rule("limited", flow, listen=f"127.0.0.1:{port}")


def statuses(port: int, n: int) -> list[int]:
    with httpx.Client(timeout=10) as c:
        return [c.get(f"http://127.0.0.1:{port}/").status_code for _ in range(n)]


def test_own_buckets(lab):
    (port,) = free_ports(1)
    lab.vaned({"r.json": limited(port, 3)}).wait_accepting(port)
    assert statuses(port, 5) == [200, 200, 200, 429, 429]


def test_redis_buckets_are_shared_by_two_daemons(lab, redis_server):
    p1, p2 = free_ports(2)
    d1 = lab.vaned({"r.json": limited(p1, 4, store=redis_server.url)}).wait_accepting(p1)
    other = lab.base / "conf2"
    (other / "rules").mkdir(parents=True)
    (other / "rules" / "r.json").write_text((lab.conf / "rules" / "r.json").read_text().replace(str(p1), str(p2)))
    d2 = lab.vaned(config_dir=other, env={"VANE_MGMT_UNIX": str(lab.base / "mgmt2.sock")})
    d2.wait_accepting(p2)
    got = statuses(p1, 3) + statuses(p2, 3)
    assert got == [200, 200, 200, 200, 429, 429]        # four tokens for both daemons together
    assert any(k.startswith("vane:rl:rules/r.json#/flow/ratelimit:all") for k in redis_server.keys())
    assert d1.count("unreachable") == 0 and d2.count("unreachable") == 0


def test_redis_away_the_daemon_decides_alone_then_returns(lab, redis_server):
    (port,) = free_ports(1)
    d = lab.vaned({"r.json": limited(port, 2, store=redis_server.url)}).wait_accepting(port)
    assert statuses(port, 3) == [200, 200, 429]         # Redis's bucket is empty
    redis_server.stop()
    assert statuses(port, 4) == [200, 200, 429, 429]    # the daemon's own bucket, full at first
    d.wait_log(r"ratelimit store redis://127\.0\.0\.1:\d+/0 unreachable")
    assert d.count("unreachable") == 1                  # logged once for the outage
    metrics = d.cli("get", "metrics").stdout
    assert 'vane_ratelimit_store_fallbacks_total{store="redis://127.0.0.1:' in metrics
    assert "ERROR" not in d.stderr and "Traceback" not in d.stderr
    redis_server.start()                                # empty again: a full bucket there

    def back() -> bool:
        return statuses(port, 1) == [200]
    assert wait_until(back, timeout=40, interval=0.5)   # after the store's backoff
    d.wait_log("answers again")


def test_store_url_is_checked_at_compile(lab):
    (port,) = free_ports(1)
    d = lab.vaned({"r.json": limited(port, 2, store="mysql://db")}, ready=False)
    assert d.wait(10) == 1
    assert "rules/r.json" in d.stderr and "/flow/ratelimit/input/store" in d.stderr
