"""vaned with two worker processes: both serve, a killed worker is replaced while the other
goes on, a reload reaches every worker, limits hold across them, metrics sum them."""

from __future__ import annotations

import os
import signal

import httpx
import pytest

from tests.support.config import rule
from tests.support.net import free_ports, wait_until

pytestmark = pytest.mark.timeout(120)

WORKERS = {"VANE_WORKERS": "2"}


def hello(port: int, body: str = "hello") -> dict:
    return rule("hello", {"respond": {"input": {"body": body}}}, listen=f"127.0.0.1:{port}")


def workers(d) -> list[dict]:
    return d.mgmt("stats")["workers"]


def started(lab, rules: dict):
    """vaned with two workers, once both answer the master (on a busy machine the second may
    still be starting when the port already accepts: the master's socket queues for it)."""
    (port,) = [int(r["listen"][0].rsplit(":", 1)[1]) for r in rules.values()]
    d = lab.vaned(rules, env=WORKERS).wait_accepting(port)
    assert wait_until(lambda: [w["state"] for w in workers(d)] == ["serving", "serving"], timeout=30, interval=0.2)
    return d


def test_two_workers_serve_and_a_killed_one_is_replaced(lab):
    (port,) = free_ports(1)
    d = started(lab, {"r.json": hello(port)})
    ws = workers(d)
    pids = {w["pid"] for w in ws}
    assert len(pids) == 2 and os.getpid() not in pids

    def both_served() -> bool:
        with httpx.Client(timeout=5) as c:   # a new connection each time: both workers accept
            for _ in range(20):
                assert c.get(f"http://127.0.0.1:{port}/", headers={"Connection": "close"}).text == "hello"
        return all(w["requests"] > 0 for w in workers(d))
    assert wait_until(both_served, timeout=30, interval=0.1)

    victim = ws[0]
    os.kill(victim["pid"], signal.SIGKILL)
    d.wait_log(r"worker 0 \(pid \d+\) exited \(killed by SIGKILL\)")
    with httpx.Client(timeout=5) as c:          # the other worker kept serving meanwhile
        assert c.get(f"http://127.0.0.1:{port}/").text == "hello"

    def replaced() -> bool:
        w = workers(d)[0]
        return w["state"] == "serving" and w["pid"] not in (None, victim["pid"]) and w["restarts"] == 1
    assert wait_until(replaced, timeout=20, interval=0.2)
    assert "Traceback" not in d.stderr


def test_reload_reaches_every_worker(lab):
    (port,) = free_ports(1)
    d = started(lab, {"r.json": hello(port, "one")})
    lab.write_rule("r.json", hello(port, "two"))
    answer = d.mgmt("reload")
    assert answer["status"] == "reloaded"
    assert {w["graph_hash"] for w in workers(d)} == {answer["hash"]}
    with httpx.Client(timeout=5) as c:
        assert {c.get(f"http://127.0.0.1:{port}/", headers={"Connection": "close"}).text
                for _ in range(10)} == {"two"}


def test_a_broken_reload_changes_no_worker(lab):
    (port,) = free_ports(1)
    d = started(lab, {"r.json": hello(port, "one")})
    before = {w["graph_hash"] for w in workers(d)}
    lab.write_rule("r.json", "{ not json")
    with pytest.raises(RuntimeError):
        d.mgmt("reload")
    assert {w["graph_hash"] for w in workers(d)} == before
    with httpx.Client(timeout=5) as c:
        assert c.get(f"http://127.0.0.1:{port}/").text == "one"


def test_metrics_sum_the_workers(lab):
    (port,) = free_ports(1)
    d = started(lab, {"r.json": hello(port)})
    with httpx.Client(timeout=5) as c:
        for _ in range(30):
            c.get(f"http://127.0.0.1:{port}/", headers={"Connection": "close"})
    text = d.cli("get", "metrics").stdout
    line = next(x for x in text.splitlines()
                if x.startswith('vane_requests_total{') and 'rule="hello"' in x)
    assert float(line.rsplit(" ", 1)[1]) == 30.0
    assert sum(w["requests"] for w in workers(d)) == 30


def test_sigterm_drains_every_worker_and_the_master_exits_0(lab):
    (port,) = free_ports(1)
    d = started(lab, {"r.json": hello(port)})
    pids = [w["pid"] for w in workers(d)]
    d.signal(signal.SIGTERM)
    assert d.wait(30) == 0

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
    assert wait_until(lambda: all(gone(p) for p in pids), timeout=10)


def test_drain_from_the_cli_reaches_every_worker(lab):
    from tests.support.http_backend import Backend

    a, b = Backend("A"), Backend("B")
    for backend in (a, b):
        lab.on_close(backend.stop)
    (port,) = free_ports(1)
    (lab.conf / "config.json").write_text(
        '{"upstreams": {"api": {"backends": ["%s", "%s"]}}}' % (a.url, b.url))
    d = started(lab, {"r.json": rule("lb", {"proxy": {"input": {"upstream": "api"}}},
                                     listen=f"127.0.0.1:{port}")})
    res = d.cli("upstream", "drain", "api", a.url)
    assert res.returncode == 0, res
    served: set[str] = set()

    def both_workers_asked() -> bool:   # new connections, until both workers served some
        with httpx.Client(timeout=5) as c:
            for _ in range(10):
                served.add(c.get(f"http://127.0.0.1:{port}/", headers={"Connection": "close"}).headers["x-backend"])
        return all(w["requests"] > 0 for w in workers(d))
    assert wait_until(both_workers_asked, timeout=30, interval=0.1)
    assert served == {"B"}
    res = d.cli("upstream", "drain", "nope", a.url)
    assert res.returncode == 1 and 'no upstream group "nope"' in res.stderr
