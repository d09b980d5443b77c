"""End to end: a real vaned subprocess in front of real loopback backends (fetch, proxy, routing).

Clients: curl (HTTP/1.1, h2c prior knowledge, HTTP/2 over TLS) and httpx (HTTP/1.1, HTTP/2 by
ALPN and h2c prior knowledge). One daemon serves every rule of this module.
"""

import hashlib
import json
import socket
import ssl

import httpx
import pytest
import trustme

from tests.support.config import http_proxy, rule, write_config
from tests.support.daemon import Vaned
from tests.support.http_backend import Backend, pattern
from tests.support.net import curl, free_port
from tests.support.tls import backend_tls_context

pytestmark = pytest.mark.slow

MIB20 = 20 * 1024 * 1024


class Env:
    pass


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("vaned")
    e = Env()
    e.ca = trustme.CA()
    e.a = Backend("A")
    e.b = Backend("B")
    e.secure = Backend("S", tls=backend_tls_context(e.ca))
    e.port = free_port()
    e.tls_port = free_port()
    (root / "certs").mkdir()
    cert = e.ca.issue_cert("tls.test", "api.test")
    cert.cert_chain_pems[0].write_to_path(str(root / "certs" / "front.pem"))
    cert.private_key_pem.write_to_path(str(root / "certs" / "front.key"))
    e.ca.cert_pem.write_to_path(str(root / "certs" / "ca.pem"))
    e.ca_path = str(root / "certs" / "ca.pem")
    (root / "site").mkdir()
    (root / "site" / "hello.txt").write_text("hello static\n")
    listen = f"127.0.0.1:{e.port}"
    tls_listen = f"127.0.0.1:{e.tls_port}"
    e.flow_log = root / "flow.ndjson"
    write_config(root, {
        "10-api.json": rule("api", http_proxy(e.a.url), listen=listen, match={"req.host": "api.test"}),
        "20-web.json": [
            rule("web-app", http_proxy(e.b.url), listen=listen,
                 match={"req.host": "web.test", "req.path": {"prefix": "/app"}}),
            rule("errors", http_proxy(f"http://127.0.0.1:{free_port()}"), listen=listen,
                 match={"req.host": "down.test"}),
            rule("slow", http_proxy(e.a.url, timeout=0.5), listen=listen, match={"req.host": "slow.test"}),
            rule("upstream-host", http_proxy(e.a.url + "/base", host="internal.svc", forwarded=False), listen=listen,
                 match={"req.host": "vhost.test"}),
            rule("secure", http_proxy(e.secure.url, ca_file="certs/ca.pem"), listen=listen,
                 match={"req.host": "secure.test"}),
            rule("insecure", http_proxy(e.secure.url), listen=listen, match={"req.host": "insecure.test"}),
            rule("noverify", http_proxy(e.secure.url, verify=False), listen=listen,
                 match={"req.host": "noverify.test"}),
            rule("fetcher", {"fetch": {
                "input": {"upstream": e.a.url},
                "output": {
                    "success": {"respond": {"input": {"headers": {"x-upstream-status": "{{res.status}}",
                                                                  "x-backend-seen": "{{res.header.x-backend}}"}}}},
                    "failure": {"respond": {"input": {"status": 503, "body": "failed: {{plugin.fetch.error}}"}}},
                }}}, listen=listen, match={"req.host": "fetch.test"}),
            rule("fetch-down", {"fetch": {
                "input": {"upstream": f"http://127.0.0.1:{free_port()}"},
                "output": {
                    "success": {"respond": {}},
                    "failure": {"respond": {"input": {"status": 503, "body": "failed: {{plugin.fetch.error}}"}}},
                }}}, listen=listen, match={"req.host": "fetchdown.test"}),
            rule("fetch-body", {"fetch": {
                "input": {"upstream": e.a.url},
                "output": {"*": {"respond": {"input": {"status": 200, "body": "got [{{res.body}}]"}}}}}},
                 listen=listen, match={"req.host": "fetchbody.test"}),
        ],
        "30-files.json": rule("files", {"static": {"input": {"root": "site", "strip_prefix": "/static"},
                                                   "output": {"success": {"respond": {}},
                                                              "not_found": {"respond": {"input": {"status": 404}}},
                                                              "failure": {"respond": {"input": {"status": 500}}}}}},
                              listen=listen, match={"req.host": "web.test", "req.path": {"prefix": "/static"}}),
        "40-tls.json": rule("front-tls", http_proxy(e.a.url), listen=tls_listen, match={"req.host": "tls.test"},
                            tls={"cert": "certs/front.pem", "key": "certs/front.key"}),
    }, config={})
    e.vaned = Vaned(root, {"VANE_FLOW_LOG_FILE": str(e.flow_log)}).wait_accepting(e.port)
    e.vaned.wait_accepting(e.tls_port)
    e.url = f"http://127.0.0.1:{e.port}"
    e.root = root
    yield e
    e.vaned.stop()
    for b in (e.a, e.b, e.secure):
        b.stop()


def get(env, host, path="/", headers=None):
    with httpx.Client(timeout=30) as c:
        return c.get(env.url + path, headers={"host": host, **(headers or {})})


def flow_entries(env):
    if not env.flow_log.exists():
        return []
    return [json.loads(line) for line in env.flow_log.read_text().splitlines() if line.strip()]


def test_host_and_path_routing_across_three_files(env):
    r = get(env, "api.test", "/x")
    assert r.status_code == 200 and r.text == "A /x"
    r = get(env, "web.test", "/app/page")
    assert r.status_code == 200 and r.text == "B /app/page"
    r = get(env, "web.test", "/static/hello.txt")
    assert r.status_code == 200 and r.text == "hello static\n"
    assert get(env, "web.test", "/other").status_code == 404
    assert get(env, "nobody.test", "/").status_code == 404
    with httpx.Client(http1=False, http2=True, timeout=10) as c:      # h2c prior knowledge
        r = c.get(env.url + "/", headers={"host": "nobody.test"})
        assert r.http_version == "HTTP/2" and r.status_code == 421
        r = c.get(env.url + "/app/x", headers={"host": "web.test"})
        assert r.http_version == "HTTP/2" and r.text == "B /app/x"


def test_curl_large_bodies_both_ways(env, tmp_path):
    data = pattern(MIB20)
    digest = hashlib.sha256(data).hexdigest()
    src = tmp_path / "up.bin"
    src.write_bytes(data)
    for extra in ([], ["-H", "Transfer-Encoding: chunked"], ["--http2-prior-knowledge"]):
        r = curl(env.url + "/hash", "-H", "Host: api.test", "--data-binary", f"@{src}", *extra)
        info = json.loads(r.stdout)
        assert info["sha256"] == digest and info["length"] == MIB20, (extra, r.stderr)
        assert info["chunked"] is (extra[:1] == ["-H"])
    for query in ("", "&chunked=1", "&stream=1"):
        for extra in ([], ["--http2-prior-knowledge"]):
            r = curl(env.url + f"/data?n={MIB20}{query}", "-H", "Host: api.test", *extra)
            assert hashlib.sha256(r.stdout).hexdigest() == digest, (query, extra, r.stderr)
    r = curl(env.url + "/echo?chunked=1", "-H", "Host: api.test", "--data-binary", f"@{src}")
    assert hashlib.sha256(r.stdout).hexdigest() == digest


def test_httpx_streaming_http1_and_h2c(env):
    data = pattern(MIB20)
    digest = hashlib.sha256(data).hexdigest()

    def gen():
        for i in range(0, len(data), 1 << 20):
            yield data[i:i + (1 << 20)]

    for kw in ({}, {"http1": False, "http2": True}):
        with httpx.Client(timeout=60, **kw) as c:
            r = c.post(env.url + "/hash", content=gen(), headers={"host": "api.test"})
            assert json.loads(r.text)["sha256"] == digest
            with c.stream("GET", env.url + f"/data?n={MIB20}&chunked=1", headers={"host": "api.test"}) as r:
                h = hashlib.sha256()
                for chunk in r.iter_bytes():
                    h.update(chunk)
                assert h.hexdigest() == digest




def test_tls_front_h2_through_curl(env, tmp_path):
    data = pattern(3 * 1024 * 1024)
    src = tmp_path / "b.bin"
    src.write_bytes(data)
    base = ["--cacert", env.ca_path, "--resolve", f"tls.test:{env.tls_port}:127.0.0.1"]
    r = curl(*base, "--http2", "-w", "\n%{http_version}", f"https://tls.test:{env.tls_port}/headers")
    body, _, version = r.stdout.rpartition(b"\n")
    assert version == b"2", r.stderr
    seen = json.loads(body)["headers"]
    assert ["via", "2 vane"] in seen and ["x-forwarded-proto", "https"] in seen
    r = curl(*base, "--http2", f"https://tls.test:{env.tls_port}/hash", "--data-binary", f"@{src}")
    assert json.loads(r.stdout)["sha256"] == hashlib.sha256(data).hexdigest()


def test_keepalive_reuse_at_the_backend(env):
    before_conns, before_reqs = env.a.connections, env.a.requests
    with httpx.Client(timeout=10) as c:
        for i in range(60):
            assert c.get(env.url + f"/k{i}", headers={"host": "api.test"}).status_code == 200
    for i in range(20):                         # new client connection every time
        assert curl(env.url + f"/c{i}", "-H", "Host: api.test").returncode == 0
    assert env.a.requests - before_reqs == 80
    assert env.a.connections - before_conns <= 2
    rows = {r["upstream"]: r for r in env.vaned.mgmt("get_upstreams")["upstreams"]}
    row = rows[f"http://127.0.0.1:{env.a.port}"]
    assert row["idle"] >= 1 and row["max_idle"] == 128 and row["reuses"] >= 70


def test_forwarding_headers_host_and_base_path(env):
    r = get(env, "api.test", "/headers?x=1", headers={"x-forwarded-for": "6.6.6.6", "connection": "x-drop",
                                                      "x-drop": "1"})
    seen = json.loads(r.text)
    h = seen["headers"]
    assert ["host", "api.test"] in h and ["via", "1.1 vane"] in h
    assert ["x-forwarded-for", "127.0.0.1"] in h and ["x-forwarded-host", "api.test"] in h
    assert not any(k == "x-drop" for k, _ in h) and ["x-forwarded-for", "6.6.6.6"] not in h
    r = get(env, "vhost.test", "/headers")
    assert r.text == "A /base/headers"
    h = env.a.seen[-1]["headers"]
    assert ("host", "internal.svc") in h and not any(k.startswith("x-forwarded") for k, _ in h)


def test_response_hop_by_hop_stripped(env):
    r = get(env, "api.test", "/hop")
    assert r.text == "hop" and r.headers["x-kept"] == "yes"
    assert "x-secret" not in r.headers and "keep-alive" not in r.headers
    assert "proxy-authenticate" not in r.headers


def test_head_204_304_and_status_passthrough(env):
    with httpx.Client(timeout=10) as c:
        r = c.head(env.url + "/data?n=1234", headers={"host": "api.test"})
        assert r.status_code == 200 and r.headers["content-length"] == "1234" and r.content == b""
        for code in (204, 304, 404, 503):
            r = c.get(env.url + f"/status?code={code}", headers={"host": "api.test"})
            assert r.status_code == code and r.headers["x-status"] == str(code)


def test_upstream_down_502_and_slow_504_with_reasons(env):
    r = get(env, "down.test", "/")
    assert r.status_code == 502
    r = get(env, "slow.test", "/sleep?s=2")
    assert r.status_code == 504
    r = get(env, "slow.test", "/fast")
    assert r.status_code == 200                  # the rule still works afterwards
    entries = flow_entries(env)
    down = [e for e in entries if e.get("rule") == "errors" and e.get("status") == 502]
    slow = [e for e in entries if e.get("rule") == "slow" and e.get("status") == 504]
    assert down and any("refused" in err for err in down[-1]["errors"])
    assert slow and any("timeout" in err for err in slow[-1]["errors"])


def test_https_upstream_verification(env):
    r = get(env, "secure.test", "/x")
    assert r.status_code == 200 and r.text == "S /x"
    r = get(env, "insecure.test", "/x")
    assert r.status_code == 502
    r = get(env, "noverify.test", "/y")
    assert r.status_code == 200 and r.text == "S /y"
    errors = [err for e in flow_entries(env) if e.get("rule") == "insecure" for err in e["errors"]]
    assert any("certificate" in err for err in errors)


def test_fetch_fills_the_container_and_respond_flushes_it(env):
    r = get(env, "fetch.test", "/status?code=418")
    assert r.status_code == 418 and r.text == "status 418"
    assert r.headers["x-upstream-status"] == "418" and r.headers["x-backend-seen"] == "A"
    r = get(env, "fetchbody.test", "/hello")
    assert r.status_code == 200 and r.text == "got [A /hello]"
    r = get(env, "fetchdown.test", "/")
    assert r.status_code == 503 and r.text.startswith("failed: 502 connect to http://127.0.0.1:")
    for _ in range(30):                          # unread fetch bodies never leak pool slots
        get(env, "fetchbody.test", "/again")
    rows = {r["upstream"]: r for r in env.vaned.mgmt("get_upstreams")["upstreams"]}
    assert rows[f"http://127.0.0.1:{env.a.port}"]["active"] == 0


def test_connect_is_not_forwarded(env):
    with socket.create_connection(("127.0.0.1", env.port), timeout=10) as s:
        s.sendall(b"CONNECT api.test:443 HTTP/1.1\r\nHost: api.test\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 405")


def test_httpx_http2_over_tls_alpn(env):
    data = pattern(5 * 1024 * 1024)
    ctx = ssl.create_default_context(cafile=env.ca_path)
    with httpx.Client(http2=True, verify=ctx, timeout=30) as c:
        url = f"https://127.0.0.1:{env.tls_port}"
        ext = {"sni_hostname": "tls.test"}
        r = c.get(url + "/headers", headers={"host": "tls.test"}, extensions=ext)
        assert r.http_version == "HTTP/2" and ["via", "2 vane"] in json.loads(r.text)["headers"]
        r = c.post(url + "/echo", content=data, headers={"host": "tls.test"}, extensions=ext)
        assert r.http_version == "HTTP/2" and hashlib.sha256(r.content).digest() == hashlib.sha256(data).digest()
