"""Load balancing end to end: a real vaned in front of real HTTP (and TCP) backends on loopback,
steered with the real ``vane`` client. Upstream groups in config.json and inline, active health
checks, passive ejection, drain / disable / enable, backups, weights, consistent hashing,
safe retries, 503 when nothing is left, and health state across reloads."""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from typing import Any

import gevent
import httpx
import pytest
from gevent.event import Event

from tests.support.backends import tagged
from tests.support.config import rule
from tests.support.daemon import Lab, Vaned
from tests.support.http_backend import Backend
from tests.support.net import connect, free_port, recv_line, wait_until

pytestmark = pytest.mark.timeout(90)

INTERVAL = 0.2
FALL = 2
CHECK_TIMEOUT = 0.5
HEALTH = {"path": "/status", "interval": INTERVAL, "timeout": CHECK_TIMEOUT, "fall": FALL, "rise": 1}


def backends(lab: Lab, *names: str) -> list[Backend]:
    out = [Backend(n) for n in names]
    for b in out:
        lab.on_close(b.stop)
    return out


def start(lab: Lab, groups: dict, flow: dict, env: dict | None = None) -> tuple[Vaned, httpx.Client]:
    port = free_port()
    (lab.conf / "config.json").write_text(json.dumps({"upstreams": groups}))
    d = lab.vaned({"10-lb.json": rule("lb", flow, listen=f"127.0.0.1:{port}")}, env=env)
    d.wait_accepting(port)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    lab.on_close(client.close)
    return d, client


def proxy(upstream: Any, **inputs: Any) -> dict:
    return {"proxy": {"input": {"upstream": upstream, **inputs}}}


def rows(d: Vaned) -> dict[str, dict]:
    """``get_upstreams``: the upstream groups' backends by address."""
    return {r["backend"]: r for r in d.mgmt("get_upstreams")["groups"]}


class Gated(Backend):
    """A backend whose ``/gate`` answers only when the test opens ``gate``."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.gate = Event()

    def app(self, method, path, query, headers, body, conn_id):
        if path == "/gate":
            self.gate.wait(30)
            return 200, [("x-backend", self.name)], b"released", False
        return super().app(method, path, query, headers, body, conn_id)


def served_by(client: httpx.Client, n: int, path: str = "/x", **headers: str) -> Counter:
    counts: Counter = Counter()
    for _ in range(n):
        r = client.get(path, headers=headers)
        assert r.status_code == 200, (r.status_code, r.text)
        counts[r.headers["x-backend"]] += 1
    return counts


def test_a_killed_backend_is_found_down_by_its_checks_and_no_get_fails(lab):
    a, b, c = backends(lab, "A", "B", "C")
    d, client = start(lab, {"api": {"backends": [a.url, b.url, c.url], "health": HEALTH}}, proxy("api"))
    assert served_by(client, 30) == {"A": 10, "B": 10, "C": 10}
    statuses: list[int] = []
    running = True

    def load() -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=10) as own:
            while running:
                statuses.append(own.get("/x").status_code)

    clients = [gevent.spawn(load) for _ in range(4)]
    wait_until(lambda: len(statuses) > 50, 10)
    b.kill()
    killed = time.monotonic()
    found = wait_until(lambda: rows(d)[b.url]["health"] == "down", 10, interval=0.05)
    took = time.monotonic() - killed
    seen = len(statuses)
    wait_until(lambda: len(statuses) > seen + 100, 10)
    running = False
    gevent.joinall(clients, timeout=10, raise_error=True)
    assert found, rows(d)
    # fall checks, one interval apart, each bounded by the check timeout (and a round's start)
    assert took < FALL * INTERVAL + INTERVAL + CHECK_TIMEOUT + 2.0
    assert Counter(statuses) == {200: len(statuses)}      # every GET answered, none lost to the kill
    row = rows(d)[b.url]
    assert row["state"] == "down" and row["check_failures"] >= FALL and row["checks"]["fail"] >= FALL
    assert row["check"] == "fail" and "refused" in row["error"]
    assert served_by(client, 20) == {"A": 10, "C": 10}
    text = d.cli("get", "metrics").stdout
    assert f'vane_upstream_up{{backend="{b.url}",group="api"}} 0.0' in text
    assert f'vane_upstream_up{{backend="{a.url}",group="api"}} 1.0' in text
    assert f'vane_upstream_health_checks_total{{backend="{b.url}",group="api",result="fail"}}' in text
    assert d.find(rf"upstream group api: backend {b.url} is down \({FALL} checks failed") >= 0
    plain = d.cli("get", "upstreams").stdout.splitlines()
    assert plain[0] == "group\tbackend\tstate\tweight\tbackup\tactive\tcheck\tlast check\tlatency\tfails"
    line = next(line for line in plain if line.startswith(f"api\t{b.url}\t"))
    assert line.split("\t")[2].startswith("down (") and "\tfail: " in line, line


def key_for(client: httpx.Client, backend: str, prefix: str = "k") -> str:
    """A hash key the group sends to ``backend``."""
    for i in range(500):
        key = f"{prefix}{i}"
        if client.get("/x", headers={"x-key": key}).headers["x-backend"] == backend:
            return key
    raise AssertionError(f"no key maps to {backend}")


def test_drain_from_the_cli_moves_new_requests_while_one_in_flight_finishes(lab):
    a, b = Gated("A"), Gated("B")
    for backend in (a, b):
        lab.on_close(backend.stop)
        lab.on_close(backend.gate.set)
    d, client = start(lab, {"api": {"backends": [a.url, b.url], "balance": "hash",
                                    "hash_key": "{{req.header.x-key}}"}}, proxy("api"))
    key = key_for(client, "A")
    slow = gevent.spawn(client.get, "/gate", headers={"x-key": key})
    assert wait_until(lambda: rows(d)[a.url]["active"] == 1, 5), rows(d)
    res = d.cli("upstream", "drain", "api", f"127.0.0.1:{a.port}")
    assert res.returncode == 0 and res.stdout == f"api {a.url} draining\n", res
    assert served_by(client, 10, **{"x-key": key}) == {"B": 10}        # new requests go elsewhere
    row = rows(d)[a.url]
    assert (row["state"], row["admin"], row["active"]) == ("draining", "draining", 1)
    a.gate.set()
    done = slow.get(timeout=10)                                         # the one in flight finishes
    assert done.status_code == 200 and done.text == "released" and done.headers["x-backend"] == "A"
    assert rows(d)[a.url]["active"] == 0
    assert d.cli("upstream", "enable", "api", a.url).stdout == f"api {a.url} up\n"
    assert served_by(client, 5, **{"x-key": key}) == {"A": 5}
    # mistakes: the daemon answers with an error (exit 1), a usage error is 64
    res = d.cli("upstream", "drain", "nope", a.url)
    assert res.returncode == 1 and 'no upstream group "nope"' in res.stderr
    res = d.cli("upstream", "drain", "api", "10.9.9.9:1")
    assert res.returncode == 1 and 'no backend "10.9.9.9:1" in upstream group api' in res.stderr
    assert d.cli("upstream", "pause", "api", a.url).returncode == 64
    assert "Traceback" not in d.stderr


def test_consistent_hashing_moves_only_the_removed_backends_share(lab):
    bs = backends(lab, "A", "B", "C", "D")
    group = {"backends": [b.url for b in bs], "balance": "hash", "hash_key": "{{req.cookie.session}}"}
    d, client = start(lab, {"web": group}, proxy("web"))
    keys = [f"s{i}" for i in range(400)]

    def mapping() -> dict[str, str]:
        return {k: client.get("/x", headers={"cookie": f"session={k}"}).headers["x-backend"] for k in keys}

    before = mapping()
    share = Counter(before.values())
    assert set(share) == {"A", "B", "C", "D"} and min(share.values()) > 40
    (lab.conf / "config.json").write_text(json.dumps({"upstreams": {"web": {
        **group, "backends": [b.url for b in bs if b.name != "C"]}}}))
    assert d.cli("reload").stdout.startswith("reloaded ")
    after = mapping()
    moved = {k for k in keys if before[k] != after[k]}
    assert moved == {k for k in keys if before[k] == "C"}     # C's keys, and only those
    assert set(after.values()) == {"A", "B", "D"}
    # a request without the cookie is balanced like any other
    assert client.get("/x").status_code == 200


def test_weights_are_respected(lab):
    a, b = backends(lab, "A", "B")
    d, client = start(lab, {"rr": {"backends": [a.url, {"address": b.url, "weight": 3}]},
                            "p2c": {"backends": [a.url, {"address": b.url, "weight": 3}], "balance": "random"}},
                      {"route": {"input": {"routes": [{"name": "p2c", "match": {"req.path": {"prefix": "/p2c"}}}]},
                                 "output": {"p2c": proxy("p2c"), "*": proxy("rr")}}})
    counts = served_by(client, 200)
    assert 45 <= counts["A"] <= 55 and 145 <= counts["B"] <= 155
    counts = served_by(client, 400, path="/p2c")
    assert 40 <= counts["A"] <= 160          # about a quarter (power of two choices leans to the heavier one)


def test_backups_serve_only_while_the_primaries_cannot(lab):
    p1, p2, k = backends(lab, "P1", "P2", "K")
    d, client = start(lab, {}, proxy([p1.url, p2.url, {"address": k.url, "backup": True}]))
    assert served_by(client, 30) == {"P1": 15, "P2": 15}
    assert d.cli("upstream", "disable", "rule/lb", p1.url).returncode == 0
    assert served_by(client, 10) == {"P2": 10}
    p2.kill()                                       # no health checks: passive ejection finds it
    assert served_by(client, 10) == {"K": 10}       # GETs retried on the backup, none lost
    assert rows(d)[p2.url]["state"] == "down"
    assert d.cli("upstream", "enable", "rule/lb", p1.url).returncode == 0
    assert served_by(client, 10) == {"P1": 10}


def test_all_backends_down_is_503_with_retry_after_at_once(lab):
    # backends that take connections and never answer: trying one would take the 5 s timeout
    hung = [f"http://127.0.0.1:{lab.listening_socket().getsockname()[1]}" for _ in range(2)]
    a, = backends(lab, "A")
    d, client = start(lab, {"gone": {"backends": hung, "health": {**HEALTH, "interval": 1.0, "fall": 1}},
                            "one": {"backends": [a.url]}},
                      {"route": {"input": {"routes": [{"name": "one", "match": {"req.path": {"prefix": "/one"}}}]},
                                 "output": {"one": proxy("one"), "*": proxy("gone", timeout=5)}}})
    assert wait_until(lambda: all(r["state"] == "down" for u, r in rows(d).items() if u in hung), 10)
    assert {rows(d)[u]["check"] for u in hung} == {"timeout"}
    started = time.monotonic()
    r = client.get("/x")
    assert time.monotonic() - started < 2.0          # no backend tried: not the 5 s timeout
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert d.cli("upstream", "disable", "one", a.url).returncode == 0
    r = client.get("/one")
    assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
    assert d.find(r"upstream gone failed \(unavailable\) for rule lb") >= 0
    assert "Traceback" not in d.stderr


def sink(server, conn: socket.socket) -> None:
    """Read one request head and its body, then close without answering."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    server.received.append(head.split(b"\r\n")[0])


def test_a_post_is_never_replayed_while_a_get_is_retried_elsewhere(lab):
    broken = lab.tcp(sink)
    good, = backends(lab, "GOOD")
    d, client = start(lab, {"api": {"backends": [f"http://{broken.target}", good.url],
                                    "passive": {"max_fails": 0}}}, proxy("api"))
    r = client.get("/first")                  # round robin starts at the broken one: retried
    assert r.status_code == 200 and r.headers["x-backend"] == "GOOD"
    assert broken.received == [b"GET /first HTTP/1.1"]
    assert client.get("/second").headers["x-backend"] == "GOOD"
    posts_before = sum(1 for s in good.seen if s["method"] == "POST")
    r = client.post("/echo", content=b"pay once")     # the broken one again: sent, so never again
    assert r.status_code == 502
    assert broken.received[-1] == b"POST /echo HTTP/1.1"
    assert [line for line in broken.received if line.startswith(b"POST")] == [b"POST /echo HTTP/1.1"]
    assert sum(1 for s in good.seen if s["method"] == "POST") == posts_before
    entry = d.find(r"upstream api backend http://127\.0\.0\.1:\d+ failed \(\w+\) for rule lb")
    assert entry >= 0, d.stderr


def test_health_state_survives_a_reload_that_leaves_the_group_alone(lab):
    a, b = backends(lab, "A", "B")
    group = {"backends": [a.url, b.url], "health": HEALTH}
    d, client = start(lab, {"api": group}, proxy("api"))
    assert d.cli("upstream", "drain", "api", b.url).returncode == 0
    assert wait_until(lambda: rows(d)[a.url]["checks"]["ok"] >= 3, 5)
    checks = rows(d)[a.url]["checks"]["ok"]
    lab.write_rule("20-other.json", rule("other", {"respond": {"input": {"body": "x"}}},
                                         listen=f"127.0.0.1:{free_port()}"))
    assert d.cli("reload").stdout.startswith("reloaded ")
    row = rows(d)
    assert row[b.url]["state"] == "draining" and row[a.url]["checks"]["ok"] >= checks
    assert served_by(client, 6) == {"A": 6}
    # the same group spelt with its defaults is the same group
    (lab.conf / "config.json").write_text(json.dumps({"upstreams": {"api": {**group, "balance": "round_robin"}}}))
    assert d.cli("reload").stdout.startswith("reloaded ")
    assert rows(d)[b.url]["state"] == "draining"
    # a changed group starts afresh: nothing drained, counters from zero
    (lab.conf / "config.json").write_text(json.dumps({"upstreams": {"api": {**group, "health": {
        **HEALTH, "interval": INTERVAL * 2}}}}))
    assert d.cli("reload").stdout.startswith("reloaded ")
    row = rows(d)
    assert row[b.url]["state"] == "up" and row[a.url]["checks"]["ok"] < checks
    assert served_by(client, 6) == {"A": 3, "B": 3}
    # a group no reload serves any more is no longer checked
    lab.write_rule("10-lb.json", rule("lb", {"respond": {"input": {"body": "no proxy"}}},
                                      listen=str(client.base_url).removeprefix("http://")))
    assert d.cli("reload").stdout.startswith("reloaded ")
    assert d.cli_json("get", "upstreams")["groups"] == []
    gevent.sleep(INTERVAL * 2)
    hits = sum(1 for s in a.seen if s["path"] == "/status")
    gevent.sleep(INTERVAL * 4)
    assert sum(1 for s in a.seen if s["path"] == "/status") == hits


def test_l4_group_with_tcp_checks(lab):
    one = lab.tcp(tagged(b"ONE"))
    two = lab.tcp(tagged(b"TWO"))
    port = free_port()
    (lab.conf / "config.json").write_text(json.dumps({"upstreams": {"db": {
        "backends": [one.target, two.target], "balance": "least_conn",
        "health": {"interval": INTERVAL, "timeout": CHECK_TIMEOUT, "fall": 1}}}}))
    d = lab.vaned({"10-tcp.json": rule("tcp", {"proxy": {"input": {"target": "db"}}}, listen=f"127.0.0.1:{port}")})
    d.wait_accepting(port)

    def banner() -> bytes:
        with connect(port) as s:
            return recv_line(s)

    assert {banner() for _ in range(6)} == {b"ONE\r\n", b"TWO\r\n"}
    one.close()
    assert wait_until(lambda: rows(d)[one.target]["state"] == "down", 10), rows(d)
    assert {banner() for _ in range(6)} == {b"TWO\r\n"}
    assert rows(d)[two.target]["checks"]["ok"] >= 1


def test_a_bad_group_is_refused_with_file_and_pointer_and_the_running_one_stays(lab):
    a, = backends(lab, "A")
    d, client = start(lab, {"api": {"backends": [a.url]}}, proxy("api"))
    (lab.conf / "config.json").write_text(json.dumps({"upstreams": {"api": {
        "backends": [{"address": a.url, "weight": 0}], "balance": "hash"}}}))
    res = d.cli("reload")
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.splitlines() == [
        'config.json: /upstreams/api/backends/0/weight: 0 is less than the minimum of 1']
    res = d.cli("compile", str(lab.conf))
    assert res.returncode == 1 and "config.json: /upstreams/api/backends/0/weight: " in res.stderr
    lab.write_rule("10-lb.json", rule("lb", proxy("apx"), listen=str(client.base_url).removeprefix("http://")))
    (lab.conf / "config.json").write_text(json.dumps({"upstreams": {"api": {"backends": [a.url]}}}))
    res = d.cli("reload")
    assert res.returncode == 1
    assert res.stderr.splitlines() == ['rules/10-lb.json: /flow/proxy/input/upstream: unknown upstream group '
                                       '"apx": expected an upstream group (config.json upstreams: api)']
    assert served_by(client, 3) == {"A": 3}          # the running graph serves on
    assert "Traceback" not in d.stderr


def test_https_backends_are_checked_as_the_node_reaches_them(lab):
    import trustme

    from tests.support.tls import backend_tls_context
    ca = trustme.CA()
    (lab.conf / "certs").mkdir()
    ca.cert_pem.write_to_path(str(lab.conf / "certs" / "ca.pem"))
    secure = Backend("S", tls=backend_tls_context(ca))
    lab.on_close(secure.stop)
    port = free_port()
    (lab.conf / "config.json").write_text(json.dumps({"upstreams": {
        "strict": {"backends": [secure.url], "health": HEALTH},
        "private": {"backends": [secure.url], "health": {**HEALTH, "ca_file": "certs/ca.pem"}}}}))
    d = lab.vaned({"10-lb.json": [
        rule("inline", proxy([secure.url], ca_file="certs/ca.pem", health=HEALTH), listen=f"127.0.0.1:{port}"),
        rule("strict", proxy("strict", ca_file="certs/ca.pem"), listen=f"127.0.0.1:{free_port()}"),
        rule("private", proxy("private", ca_file="certs/ca.pem"), listen=f"127.0.0.1:{free_port()}")]})
    d.wait_accepting(port)

    def by_group() -> dict[str, dict]:
        return {r["group"]: r for r in d.cli_json("get", "upstreams")["groups"]}

    assert wait_until(lambda: all(r["last_check"] for r in by_group().values()), 10)
    assert wait_until(lambda: by_group()["strict"]["health"] == "down", 10)
    groups = by_group()
    assert groups["rule/inline"]["check"] == "ok" and groups["private"]["check"] == "ok"
    assert "certificate" in groups["strict"]["error"]        # a group's checks verify with the system CAs
    r = httpx.get(f"http://127.0.0.1:{port}/x", timeout=10)
    assert r.status_code == 200 and r.headers["x-backend"] == "S"
