"""The HTTP management server with a fake daemon: real sockets, httpx and the vane client."""

import json
import socket

import gevent
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.mgmt import CERTS, HASH_A, HASH_B, LISTENERS, flow_entry, start_http
from tests.support.net import wait_until
from vane.mgmt.client import Client, DaemonError
from vane.mgmt.server_http import LOOPBACK, PUBLIC, HttpMgmtServer
from vane.mgmt.server_unix import MgmtStartError
from vane.mgmt.service import start_management

TOKEN = "s3cret-token"


@pytest.fixture
def server(daemon):
    srv = start_http(daemon, token=TOKEN)
    yield srv
    srv.stop()


@pytest.fixture
def url(server):
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture
def client(url):
    return Client(http_url=url, token=TOKEN, timeout=5)


def test_every_unary_verb(client, daemon):
    assert client.call("ping")["pong"] is True
    assert client.call("stats")["graph_hash"] == HASH_A
    daemon.next_hash = HASH_B
    assert client.call("reload") == {"status": "reloaded", "hash": HASH_B}
    assert client.call("compile_dry_run", {"dir": "/etc/vaned"})["listeners"]
    assert client.call("get_config")["hash"] == HASH_B
    assert client.call("get_listeners") == {"listeners": LISTENERS}
    assert client.call("get_connections")["connections"][0]["rule"] == "blog"
    assert client.call("get_metrics", {"format": "json"})["families"]
    assert client.call("get_plugins")["plugins"][0]["name"] == "auth"
    assert client.call("get_upstreams")["upstreams"][0]["idle"] == 3
    assert client.call("get_certs") == {"certs": CERTS}
    assert client.call("set_flow_log", {"level": "trajectory"}) == {"level": "trajectory"}
    assert client.call("shutdown") == {"status": "draining"} and daemon.shutdown_called


def test_errors_map_to_statuses(url, daemon):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    daemon.reload_fails = True
    r = httpx.post(f"{url}/v1/reload", headers={**auth, "X-Request-Id": "r1"}, json={})
    assert r.status_code == 422
    body = r.json()
    assert body["request_id"] == "r1" and body["result"] is None
    assert body["error"]["kind"] == "Compile" and body["error"]["file"] == "rules/20-api.json"
    r = httpx.post(f"{url}/v1/frobnicate", headers=auth, json={})
    assert (r.status_code, r.json()["error"]["kind"]) == (404, "UnknownVerb")
    r = httpx.post(f"{url}/v1/get_metrics", headers=auth, json={"format": "xml"})
    assert (r.status_code, r.json()["error"]["kind"]) == (400, "BadRequest")
    r = httpx.post(f"{url}/v1/ping", headers={**auth, "Content-Type": "application/json"}, content=b"{nope")
    assert r.status_code == 400
    r = httpx.get(f"{url}/v1/ping", headers=auth)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    daemon.fail.add("stats")
    r = httpx.post(f"{url}/v1/stats", headers=auth, json={})
    assert (r.status_code, r.json()["error"]["kind"]) == (500, "Internal")
    assert httpx.post(f"{url}/v1/ping", headers=auth, json={}).json()["result"]["pong"]


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic czNjcmV0LXRva2Vu", f"Bearer {TOKEN}x"])
def test_missing_or_wrong_token_is_401(url, header):
    headers = {"Authorization": header} if header else {}
    r = httpx.post(f"{url}/v1/ping", headers=headers, json={})
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["error"]["kind"] == "Unauthorized"
    assert httpx.get(f"{url}/metrics", headers=headers).status_code == 401


def test_wrong_token_via_client(url):
    with pytest.raises(DaemonError, match="Unauthorized"):
        Client(http_url=url, token="nope").call("ping")


def test_no_token_refuses_to_start(daemon):
    with pytest.raises(MgmtStartError, match="token"):
        HttpMgmtServer(daemon, port=0)
    with pytest.raises(MgmtStartError, match="token"):
        HttpMgmtServer(daemon, port=0, public=True)


def test_management_without_token_binds_no_http(daemon, tmp_path):
    daemon.settings.mgmt_unix = str(tmp_path / "v.sock")
    daemon.settings.mgmt_http_port = 0
    daemon.settings.mgmt_http_token_file = str(tmp_path / "missing.token")
    for public in (False, True):
        daemon.settings.mgmt_http_public = public
        mgmt = start_management(daemon)
        try:
            assert mgmt.http is None
            assert Client(socket_path=daemon.settings.mgmt_unix).call("ping")["pong"]
        finally:
            mgmt.stop()


def test_public_with_token_binds_all_addresses(daemon):
    srv = HttpMgmtServer(daemon, port=0, token=TOKEN, public=True)
    assert srv.hosts == PUBLIC
    srv.start()
    try:
        assert ("0.0.0.0", srv.port) in srv.addresses
        assert Client(http_url=f"http://127.0.0.1:{srv.port}", token=TOKEN).call("ping")["pong"]
    finally:
        srv.stop()


def test_default_binds_loopback_v4_and_v6_on_one_port(daemon):
    srv = HttpMgmtServer(daemon, port=0, token=TOKEN)
    assert srv.hosts == LOOPBACK
    srv.start()
    try:
        hosts = {h for h, _ in srv.addresses}
        assert "127.0.0.1" in hosts
        assert len({p for _, p in srv.addresses}) == 1
        if "::1" in hosts:
            assert Client(http_url=f"http://[::1]:{srv.port}", token=TOKEN).call("ping")["pong"]
    finally:
        srv.stop()


def test_body_too_large_is_413(url):
    big = json.dumps({"dir": "x" * (2 << 20)}).encode()
    r = httpx.post(f"{url}/v1/compile_dry_run", content=big,
                   headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["kind"] == "TooLarge"


def test_metrics_endpoint_for_scrapers(url):
    r = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    names = {f.name for f in text_string_to_metric_families(r.text)}
    assert "vane_requests" in names


def test_stream_is_chunked_ndjson_and_close_cancels(url, daemon):
    def produce():
        wait_until(lambda: daemon.flow_log.subscribers == 1)
        for i in range(3):
            daemon.flow_log.record(flow_entry(i))

    gevent.spawn(produce)
    with httpx.stream("POST", f"{url}/v1/tail_flow", headers={"Authorization": f"Bearer {TOKEN}"},
                      json={}, timeout=5) as r:
        assert r.headers["content-type"] == "application/x-ndjson"
        assert r.headers.get("transfer-encoding") == "chunked"
        frames = []
        for line in r.iter_lines():
            if line.strip():
                frames.append(json.loads(line))
            if len(frames) == 3:
                break
    assert [f["stream"]["data"]["path"] for f in frames] == ["/post/0", "/post/1", "/post/2"]
    assert [f["stream"]["seq"] for f in frames] == [1, 2, 3]
    assert wait_until(lambda: daemon.flow_log.subscribers == 0)


def test_stream_via_client_and_idle_disconnect(client, daemon):
    reader = client.stream("tail_flow")
    gevent.spawn(lambda: wait_until(lambda: daemon.flow_log.subscribers == 1)
                 and daemon.flow_log.record(flow_entry(9)))
    assert next(iter(reader))["path"] == "/post/9"
    reader.close()
    assert wait_until(lambda: daemon.flow_log.subscribers == 0)
    # a client that vanishes while the stream is idle is noticed too
    s = socket.create_connection(("127.0.0.1", int(client.http_url.rsplit(":", 1)[1])))
    s.sendall(b"POST /v1/tail_log HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + TOKEN.encode()
              + b"\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n")
    assert wait_until(lambda: daemon.log_hub.subscribers == 1)
    s.close()
    assert wait_until(lambda: daemon.log_hub.subscribers == 0)


def test_stream_error_before_start(client, daemon):
    with pytest.raises(DaemonError, match="BadRequest"):
        list(client.stream("tail_flow", {"backlog": -5}))
