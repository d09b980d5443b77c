"""Management end to end against a real vaned: every verb over the unix socket and HTTP, every CLI
command with its exit code, reload outcomes, tail_flow with a live request, slow readers."""

import json
import os
import signal
import socket
import subprocess
import time
from datetime import datetime

import httpx
import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

from tests.support.config import http_proxy, rule, write_config
from tests.support.daemon import ROOT, VANE, Vaned, clean_environ
from tests.support.http_backend import Backend
from tests.support.net import free_port

pytestmark = pytest.mark.timeout(90)

TOKEN = "s3cret-token"


class Env:
    pass


def web_rule(port, backend, name="web", host="app.test"):
    return rule(name, http_proxy(backend.url), listen=f"127.0.0.1:{port}", match={"req.host": host})


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("mgmt")
    e = Env()
    e.root = root
    e.backend = Backend("B")
    e.port, e.tls_port, e.http_port = free_port(), free_port(), free_port()
    ca = trustme.CA()
    (root / "certs").mkdir()
    cert = ca.issue_cert("secure.test")
    cert.cert_chain_pems[0].write_to_path(str(root / "certs" / "s.pem"))
    cert.private_key_pem.write_to_path(str(root / "certs" / "s.key"))
    tls_rule = {"rule": "secure", "listen": [f"127.0.0.1:{e.tls_port}"], "match": {"req.host": "secure.test"},
                "tls": {"cert": "certs/s.pem", "key": "certs/s.key"}, "flow": {"respond": {"input": {"body": "s"}}}}
    write_config(root, {"10-web.json": web_rule(e.port, e.backend), "20-tls.json": tls_rule}, config={})
    e.vaned = Vaned(root, {"VANE_MGMT_HTTP_PORT": str(e.http_port), "VANE_MGMT_HTTP_TOKEN": TOKEN,
                           "VANE_RELOAD_DEBOUNCE_MS": "50"}).wait_accepting(e.port)
    e.sock = e.vaned.sock_path
    yield e
    e.vaned.stop()
    e.backend.stop()


def cli(env, *args, transport="unix", timeout=20):
    environ = clean_environ()
    if transport == "unix":
        base = [*VANE, "--socket", env.sock]
    else:
        environ["VANE_MGMT_HTTP_TOKEN"] = TOKEN
        base = [*VANE, "--http", f"http://127.0.0.1:{env.http_port}"]
    return subprocess.run([*base, *args], capture_output=True, text=True, timeout=timeout, env=environ,
                          cwd=str(ROOT))


def unix_call(env, verb, args=None):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(env.sock)
        s.sendall(json.dumps({"verb": verb, "args": args or {}, "request_id": "r1"}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            buf += s.recv(1 << 20)
    return json.loads(buf)


def http_call(env, verb, args=None, token=TOKEN):
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"http://127.0.0.1:{env.http_port}/v1/{verb}", json=args or {}, headers=headers, timeout=10)


def request(env, path="/x"):
    return httpx.get(f"http://127.0.0.1:{env.port}{path}", headers={"host": "app.test"}, timeout=5)


VERBS = ["ping", "stats", "get_config", "get_listeners", "get_connections", "get_metrics", "get_plugins",
         "get_upstreams", "get_certs"]


@pytest.mark.parametrize("verb", VERBS)
def test_every_read_verb_over_both_transports(env, verb):
    request(env)
    a = unix_call(env, verb)
    assert a["error"] is None and a["request_id"] == "r1", a
    b = http_call(env, verb)
    assert b.status_code == 200, b.text
    assert b.json()["error"] is None
    if verb == "stats":
        assert a["result"]["graph_hash"] == b.json()["result"]["graph_hash"]
        assert a["result"]["connections"]["total"] >= 1
    if verb == "get_certs":
        certs = a["result"]["certs"]
        assert any("secure.test" in c["sans"] for c in certs)
    if verb == "get_upstreams":
        assert any(u["upstream"].startswith("http://127.0.0.1") for u in a["result"]["upstreams"])


def test_metrics_parse_and_json(env):
    request(env)
    text = unix_call(env, "get_metrics")["result"]
    text = text["text"] if isinstance(text, dict) else text
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"vane_requests", "vane_connections", "vane_request_duration_seconds"} <= names
    js = unix_call(env, "get_metrics", {"format": "json"})["result"]
    assert any(f["name"] == "vane_requests" for f in js["families"])


def test_certificate_expiry_is_a_metric(env):
    """Each served certificate's not-after time, labelled by its names and source, as
    ``get certs`` shows it: what an expiry alert is written against."""
    text = unix_call(env, "get_metrics")["result"]
    text = text["text"] if isinstance(text, dict) else text
    [family] = [f for f in text_string_to_metric_families(text) if f.name == "vane_cert_not_after_timestamp_seconds"]
    certs = unix_call(env, "get_certs")["result"]["certs"]
    want = {(",".join(c["sans"]), c["source"]): datetime.fromisoformat(c["not_after"]).timestamp() for c in certs}
    got = {(s.labels["names"], s.labels["source"]): s.value for s in family.samples}
    assert want and got == want
    assert any("secure.test" in names.split(",") for names, _ in got)


def test_http_transport_needs_the_token(env):
    assert http_call(env, "ping", token=None).status_code == 401
    assert http_call(env, "ping", token="wrong").status_code == 401
    assert http_call(env, "ping").status_code == 200


def test_bad_requests_get_errors_and_the_daemon_lives(env):
    assert unix_call(env, "no_such_verb")["error"]["kind"]
    assert unix_call(env, "set_flow_log", {"level": "loud"})["error"]["kind"] == "BadRequest"
    assert unix_call(env, "ping")["error"] is None


def test_set_flow_log_and_compile_dry_run(env):
    assert unix_call(env, "set_flow_log", {"level": "debug"})["result"]["level"] == "debug"
    assert unix_call(env, "set_flow_log", {"level": "trajectory"})["error"] is None
    dry = unix_call(env, "compile_dry_run", {"dir": str(env.root)})
    assert dry["error"] is None and dry["result"]["hash"] == unix_call(env, "stats")["result"]["graph_hash"]


def test_tail_flow_shows_a_request_made_meanwhile(env):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(env.sock)
        s.sendall(b'{"verb": "tail_flow", "args": {}, "request_id": "t"}\n')
        time.sleep(0.2)
        assert request(env, "/traced").status_code == 200
        buf = b""
        deadline = time.monotonic() + 5
        while b'"/traced"' not in buf and time.monotonic() < deadline:
            buf += s.recv(65536)
    frames = [json.loads(line) for line in buf.splitlines() if line.strip()]
    data = [f["stream"]["data"] for f in frames if "stream" in f and "data" in f["stream"]]
    hit = [d for d in data if d.get("path") == "/traced"]
    assert hit and hit[0]["rule"] == "web" and hit[0]["status"] == 200 and hit[0]["steps"]


def test_slow_tail_reader_gets_dropped_frames(env):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(10)
        s.connect(env.sock)
        s.sendall(b'{"verb": "tail_flow", "args": {}, "request_id": "slow"}\n')
        time.sleep(0.2)
        with httpx.Client(headers={"host": "app.test"}) as client:  # keep-alive: thousands of trajectories
            for _ in range(3000):
                client.get(f"http://127.0.0.1:{env.port}/flood")
        buf = b""
        deadline = time.monotonic() + 10
        while b'"dropped"' not in buf and time.monotonic() < deadline:
            buf += s.recv(1 << 20)
    assert b'"dropped"' in buf
    assert unix_call(env, "ping")["error"] is None


def test_cli_commands_and_exit_codes(env):
    for args in (["ping"], ["stats"], ["get", "config"], ["get", "listeners"], ["get", "connections"],
                 ["get", "metrics"], ["get", "plugins"], ["get", "upstreams"], ["get", "certs"]):
        for transport in ("unix", "http"):
            out = cli(env, *args, "--json", transport=transport)
            assert out.returncode == 0, (args, transport, out.stderr)
            json.loads(out.stdout)
        assert cli(env, *args).returncode == 0
    out = cli(env, "compile", str(env.root))
    assert out.returncode == 0 and "listener tcp 127.0.0.1" in out.stdout
    out = cli(env, "compile", str(env.root), "--daemon", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["hash"]
    assert cli(env, "bogus").returncode == 64
    down = subprocess.run([*VANE, "--socket", str(env.root / "nobody.sock"), "ping"], capture_output=True,
                          text=True, timeout=20)
    assert down.returncode == 2


def test_reload_outcomes(env):
    out = cli(env, "reload")
    assert out.returncode == 0 and out.stdout.startswith("unchanged ")
    new_port = free_port()
    write_config(env.root, {"30-new.json": web_rule(new_port, env.backend, "new", "new.test")}, config={})
    out = cli(env, "reload")
    assert out.returncode == 0 and out.stdout.startswith("reloaded "), out.stdout
    assert httpx.get(f"http://127.0.0.1:{new_port}/", headers={"host": "new.test"}, timeout=5).status_code == 200
    (env.root / "rules" / "40-broken.json").write_text('{"rule": "b", "listen": [":1"], "flow": {"nope": {}}}')
    out = cli(env, "reload")
    assert out.returncode == 1
    assert 'rules/40-broken.json: /flow/nope: unknown plugin "nope"' in out.stdout + out.stderr
    assert request(env).status_code == 200  # the old graph still serves
    os.unlink(env.root / "rules" / "40-broken.json")
    os.unlink(env.root / "rules" / "30-new.json")
    out = cli(env, "reload")
    assert out.returncode == 0


def test_shutdown_verb_drains_last(env, tmp_path):
    # a second daemon, so the module's daemon keeps serving the other tests
    port = free_port()
    write_config(tmp_path, {"10.json": web_rule(port, env.backend)}, config={})
    d = Vaned(tmp_path).wait_accepting(port)
    try:
        res = subprocess.run([*VANE, "--socket", d.sock_path, "shutdown"], capture_output=True, text=True,
                             timeout=20)
        assert res.returncode == 0
        assert d.proc.wait(15) == 0
    finally:
        if d.proc.poll() is None:
            d.proc.send_signal(signal.SIGKILL)
