"""vaned with two worker processes: both serve, a killed worker is replaced while the other
goes on, a reload reaches every worker (also 100 of them under load), limits hold across
them, metrics sum them, the flow log merges them."""

from __future__ import annotations

import json
import os
import signal
import socket

import gevent
import gevent.event
import httpx
import pytest

from tests.support.config import proxy, rule
from tests.support.net import connect, free_ports, wait_until

pytestmark = pytest.mark.timeout(120)

WORKERS = {"VANE_WORKERS": "2"}


def hello(port: int, body: str = "hello") -> dict:
    return rule("hello", {"respond": {"input": {"body": body}}}, listen=f"127.0.0.1:{port}")


def workers(d) -> list[dict]:
    return d.mgmt("stats")["workers"]


def started(lab, rules: dict, env: dict | None = None):
    """vaned with two workers, once both answer the master (on a busy machine the second may
    still be starting when the port already accepts: the master's socket queues for it)."""
    (port,) = [int(r["listen"][0].rsplit(":", 1)[1]) for r in rules.values()]
    d = lab.vaned(rules, env={**WORKERS, **(env or {})}).wait_accepting(port)
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
    metrics = d.cli("get", "metrics").stdout      # the workers' groups, merged by the master
    assert f'vane_upstream_up{{backend="{a.url}",group="api"}} 0.0' in metrics
    assert f'vane_upstream_up{{backend="{b.url}",group="api"}} 1.0' in metrics
    res = d.cli("upstream", "drain", "nope", a.url)
    assert res.returncode == 1 and 'no upstream group "nope"' in res.stderr
    assert "Traceback" not in d.stderr


def served_by_both(d, port: int, path: str = "/") -> None:
    """New connections until both workers served some."""
    def both() -> bool:
        with httpx.Client(timeout=5) as c:
            for _ in range(10):
                c.get(f"http://127.0.0.1:{port}{path}", headers={"Connection": "close"})
        return all(w["requests"] > 0 for w in workers(d))
    assert wait_until(both, timeout=30, interval=0.1)


def test_tail_flow_merges_both_workers(lab):
    (port,) = free_ports(1)
    d = started(lab, {"r.json": hello(port)})
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(d.sock_path)
        s.sendall(b'{"verb": "tail_flow", "args": {}, "request_id": "t"}\n')
        gevent.sleep(0.3)   # the master asks the workers to forward their flow logs
        seen: set[int] = set()
        buf = b""

        def from_both() -> bool:
            nonlocal buf
            with httpx.Client(timeout=5) as c:
                for _ in range(10):
                    c.get(f"http://127.0.0.1:{port}/tailed", headers={"Connection": "close"})
            while True:
                try:
                    s.settimeout(0.3)
                    chunk = s.recv(1 << 20)
                except TimeoutError:
                    break
                if not chunk:
                    break
                buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                frame = json.loads(line)
                data = frame.get("stream", {}).get("data")
                if isinstance(data, dict) and data.get("path") == "/tailed":
                    assert data["rule"] == "hello" and data["status"] == 200
                    seen.add(data["worker"])
            return seen == {0, 1}
        assert wait_until(from_both, timeout=30, interval=0)


def echoes(sock: socket.socket, msg: bytes) -> bool:
    try:
        sock.sendall(msg)
        got = b""
        while len(got) < len(msg):
            chunk = sock.recv(4096)
            if not chunk:
                break
            got += chunk
    except OSError:
        return False
    return got == msg


def test_ratelimit_and_the_per_ip_cap_hold_across_workers(lab):
    (port, held) = free_ports(2)
    limited = {"ratelimit": {"input": {"key": "all", "rate": 0.001, "burst": 6}, "output": {
        "allow": {"respond": {"input": {"status": 200, "body": "ok"}}},
        "deny": {"respond": {"input": {"status": 429, "body": "slow down"}}}}}}
    backend = lab.tcp()
    d = lab.vaned({"r.json": rule("limited", limited, listen=f"127.0.0.1:{port}"),
                   "s.json": rule("fwd", proxy(backend.target),
                                  listen=f"127.0.0.1:{held}")},
                  env={**WORKERS, "VANE_SEC_MAX_CONNECTIONS_PER_IP": "4"}).wait_accepting(port)
    assert wait_until(lambda: [w["state"] for w in workers(d)] == ["serving", "serving"], timeout=30, interval=0.2)
    statuses = []
    with httpx.Client(timeout=5) as c:   # a new connection each time: both workers answer
        for _ in range(30):
            statuses.append(c.get(f"http://127.0.0.1:{port}/", headers={"Connection": "close"}).status_code)
    assert statuses.count(200) == 6 and statuses.count(429) == 24, statuses
    assert all(w["requests"] > 0 for w in workers(d))       # both workers drew on one bucket

    # per IP: 4 connections in all, whichever worker accepted them
    conns = []
    for _ in range(10):
        try:
            conns.append(connect(held))
        except ConnectionResetError:   # the reset may already reach connect itself
            pass
    try:
        alive = sum(echoes(c, b"ping") for c in conns)   # the others were reset
        assert alive == 4
        assert sum(w["connections"] for w in workers(d)) == 4
    finally:
        for c in conns:
            c.close()


def test_reload_under_load_with_two_workers_fails_no_request(lab):
    (port,) = free_ports(1)
    d = started(lab, {"r.json": hello(port, "v0")})
    failures: list[str] = []
    done = 0
    stop = gevent.event.Event()

    def client() -> None:
        nonlocal done
        with httpx.Client(timeout=10) as c:
            while not stop.is_set():
                try:
                    r = c.get(f"http://127.0.0.1:{port}/", headers={"Connection": "close"} if done % 2 else {})
                    if r.status_code != 200 or not r.text.startswith("v"):
                        failures.append(f"{r.status_code} {r.text[:40]}")
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                done += 1
    clients = [gevent.spawn(client) for _ in range(4)]
    try:
        for i in range(1, 101):
            lab.write_rule("r.json", hello(port, f"v{i}"))
            answer = d.mgmt("reload")
            assert answer["status"] == "reloaded", answer
    finally:
        stop.set()
        gevent.joinall(clients, timeout=15)
    assert failures == [] and done > 100, (failures[:5], done)
    assert {w["graph_hash"] for w in workers(d)} == {answer["hash"]}
    with httpx.Client(timeout=5) as c:
        assert c.get(f"http://127.0.0.1:{port}/").text == "v100"


def test_tls_sessions_resume_on_either_worker_across_a_reload(lab):
    import ssl

    import trustme

    ca = trustme.CA()
    (lab.conf / "certs").mkdir(exist_ok=True)
    cert = ca.issue_cert("a.test")
    cert.cert_chain_pems[0].write_to_path(str(lab.conf / "certs" / "a.pem"))
    cert.private_key_pem.write_to_path(str(lab.conf / "certs" / "a.key"))
    (port,) = free_ports(1)

    def site(body: str) -> dict:
        r = rule("site", {"respond": {"input": {"body": body}}}, listen=f"127.0.0.1:{port}",
                 match={"req.host": "a.test"})
        r["tls"] = {"cert": "certs/a.pem", "key": "certs/a.key"}
        return r
    d = started(lab, {"r.json": site("one")}, env={"VANE_SEC_TLS_HANDSHAKES_PER_IP": "1000"})
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)

    def get(session=None) -> tuple[ssl.SSLSession, bool]:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="a.test", session=session) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                assert data.startswith(b"HTTP/1.1 200")
                return s.session, s.session_reused
    session, reused = get()
    assert not reused

    def every_resume_on_both() -> bool:
        for _ in range(10):
            assert get(session)[1], "a session did not resume"
        return all(w["requests"] > 1 for w in workers(d))
    assert wait_until(every_resume_on_both, timeout=30, interval=0)

    lab.write_rule("r.json", site("two"))
    assert d.mgmt("reload")["status"] == "reloaded"
    for _ in range(10):
        assert get(session)[1]


def test_connections_spread_evenly_across_workers(lab):
    (port,) = free_ports(1)
    d = started(lab, {"r.json": hello(port)})

    def client() -> socket.socket:
        s = connect(port)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        return s
    jobs = [gevent.spawn(client) for _ in range(64)]
    gevent.joinall(jobs, timeout=30, raise_error=True)
    try:
        counts = [w["connections"] for w in workers(d)]
        assert sum(counts) == 64 and max(counts) <= 1.3 * min(counts), counts
    finally:
        for job in jobs:
            job.value.close()


def test_the_shell_toolbar_shows_the_workers(lab):
    from vane.cli.shell import StatusPoller
    from vane.mgmt.client import Client

    (port,) = free_ports(1)
    d = started(lab, {"r.json": hello(port)})
    poller = StatusPoller(Client(socket_path=d.sock_path))
    try:
        poller.poll()
        text = "".join(part for _style, part in poller.toolbar())
    finally:
        poller.stop()
    assert "vaned up" in text and "| 2/2 workers" in text, text
