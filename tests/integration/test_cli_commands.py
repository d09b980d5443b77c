"""The vane CLI against a fake daemon behind the real unix and HTTP servers."""

import json
import signal
import subprocess
import time

import gevent
import pytest

from tests.support.daemon import ROOT, VANE
from tests.support.mgmt import (
    GROUPS,
    HASH_A,
    HASH_B,
    flow_entry,
    short_tmpdir,
    sock_in,
    start_http,
    start_unix,
)
from tests.support.net import wait_until
from vane.cli.main import main


@pytest.fixture
def sock(daemon):
    for d in short_tmpdir():
        srv = start_unix(daemon, sock_in(d))
        try:
            yield srv.path
        finally:
            srv.stop()


def vane(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_ping_and_stats(sock, capsys):
    code, out, err = vane(capsys, "--socket", sock, "ping")
    assert code == 0 and out.startswith("pong from vaned 0.1.0 at " + sock)
    code, out, _ = vane(capsys, "--socket", sock, "stats")
    assert code == 0
    lines = dict(line.split("\t", 1) for line in out.splitlines())
    assert lines["graph"] == HASH_A and lines["uptime"].startswith("1h 2m")
    assert lines["listeners"] == "2 listening, 1 retrying"
    assert lines["connections"] == "2 active, 1234 total"
    code, out, _ = vane(capsys, "--socket", sock, "--json", "stats")
    assert code == 0 and json.loads(out)["connections"]["total"] == 1234


def test_reload_prints_status_and_hash(sock, daemon, capsys):
    assert vane(capsys, "--socket", sock, "reload")[:2] == (0, f"unchanged {HASH_A}\n")
    daemon.next_hash = HASH_B
    assert vane(capsys, "--socket", sock, "reload")[:2] == (0, f"reloaded {HASH_B}\n")
    code, out, _ = vane(capsys, "--socket", sock, "--json", "reload")
    assert code == 0 and json.loads(out) == {"status": "unchanged", "hash": HASH_B}


def test_reload_compile_error_exits_1_with_file_pointer_message(sock, daemon, capsys):
    daemon.reload_fails = True
    code, out, err = vane(capsys, "--socket", sock, "reload")
    assert code == 1 and out == ""
    assert err.splitlines() == ["rules/20-api.json: /0/flow: unknown plugin 'prxy'",
                                "rules/30-web.json: /listen/0: port 0 is not allowed"]
    code, out, _ = vane(capsys, "--socket", sock, "--json", "reload")
    assert code == 1 and json.loads(out)["error"]["kind"] == "Compile"


def test_shutdown(sock, daemon, capsys):
    code, out, _ = vane(capsys, "--socket", sock, "shutdown")
    assert code == 0 and "draining" in out and daemon.shutdown_called


CERT_HEADER = "names\tsource\tstate\tissuer\tserial\tnot after\tnext renewal\tlast error\tlisteners"


def test_get_certs_shows_an_acme_fallback_and_its_error(sock, capsys):
    code, out, _ = vane(capsys, "--socket", sock, "get", "certs")
    assert code == 0 and out.splitlines()[2] == (
        "shop.example.com\tacme (fallback)\terror\tCN=shop.example.com\t3c4d\t2026-12-08T10:00:00+00:00\t-"
        "\tcannot reach the CA: connection refused\ttcp 0.0.0.0:443,tcp [::]:443")


@pytest.mark.parametrize("target,header,first", [
    ("listeners", "address\ttransport\tstate\tconns\tattempts\tlast error",
     "tcp 0.0.0.0:8080\ttcp\tlistening\t2\t1\t-"),
    ("connections", "id\tremote\tlocal\tlistener\trule\tlayer\tnode\tin\tout\tage",
     "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b\t192.0.2.7:51000\t10.0.0.1:8080\ttcp 0.0.0.0:8080\tblog\tl7\t/proxy"
     "\t1200\t53000\t12s"),
    ("plugins", "name\tdriver\tbranches\tbreaker", "auth\twasm\tsuccess,failure\tclosed"),
    ("upstreams", "upstream\tactive\tidle\tmax active\tmax idle", "http://127.0.0.1:3000\t2\t3\t256\t32"),
    ("certs", CERT_HEADER,
     "blog.example.com,www.blog.example.com\tfile certs/blog.pem\tvalid\tCN=Example CA\t1a2b"
     "\t2027-01-01T00:00:00Z\t-\t-\ttcp 0.0.0.0:443,tcp [::]:443"),
])
def test_get_tables_plain_and_json(sock, capsys, target, header, first):
    code, out, _ = vane(capsys, "--socket", sock, "get", target)
    lines = out.splitlines()
    assert code == 0 and lines[0] == header and lines[1] == first
    code, out, _ = vane(capsys, "--socket", sock, "--json", "get", target)
    assert code == 0 and isinstance(json.loads(out)[target], list)


def test_get_upstreams_shows_groups_then_the_pool(sock, daemon, capsys):
    daemon.groups = GROUPS
    code, out, _ = vane(capsys, "--socket", sock, "get", "upstreams")
    lines = out.splitlines()
    assert code == 0
    assert lines[0] == "group\tbackend\tstate\tweight\tbackup\tactive\tcheck\tlast check\tlatency\tfails"
    assert lines[1].startswith("api\thttp://10.0.0.5:8080\tup\t2\tno\t1\tok\t") and lines[1].endswith("\t1.5ms\t0")
    assert lines[2].startswith("api\thttp://10.0.0.6:8080\tdown (checks)\t1\tno\t0\tfail: connection refused\t")
    assert lines[2].endswith("\t-\t3")
    assert lines[3] == "" and lines[4] == "upstream\tactive\tidle\tmax active\tmax idle"
    code, out, _ = vane(capsys, "--socket", sock, "--json", "get", "upstreams")
    assert json.loads(out)["groups"][1]["check_failures"] == 3


def test_upstream_drain_disable_enable_and_their_errors(sock, daemon, capsys):
    assert vane(capsys, "--socket", sock, "upstream", "drain", "api", "10.0.0.5:8080")[:2] == (
        0, "api http://10.0.0.5:8080 draining\n")
    assert vane(capsys, "--socket", sock, "upstream", "disable", "api", "http://10.0.0.6:8080")[:2] == (
        0, "api http://10.0.0.6:8080 disabled\n")
    code, out, _ = vane(capsys, "--socket", sock, "--json", "upstream", "enable", "api", "10.0.0.5:8080")
    assert code == 0 and json.loads(out)["state"] == "up"
    assert daemon.admin_calls == [("api", "10.0.0.5:8080", "drain"), ("api", "http://10.0.0.6:8080", "disable"),
                                  ("api", "10.0.0.5:8080", "enable")]
    code, out, err = vane(capsys, "--socket", sock, "upstream", "drain", "web", "10.0.0.5:8080")
    assert (code, out) == (1, "") and err == 'vane: BadRequest: set_upstream: no upstream group "web" (groups: api)\n'
    assert vane(capsys, "--socket", sock, "upstream", "pause", "api", "x")[0] == 64
    assert vane(capsys, "--socket", sock, "upstream", "drain", "api")[0] == 64
    assert vane(capsys, "--socket", "/nonexistent/vaned.sock", "upstream", "drain", "api", "x")[0] == 2


def test_get_config_and_metrics(sock, capsys):
    code, out, _ = vane(capsys, "--socket", sock, "get", "config")
    assert code == 0 and json.loads(out)["hash"] == HASH_A
    code, out, _ = vane(capsys, "--socket", sock, "get", "metrics")
    assert code == 0 and "# TYPE vane_requests_total counter" in out
    code, out, _ = vane(capsys, "--socket", sock, "--json", "get", "metrics")
    fams = {f["name"] for f in json.loads(out)["families"]}
    assert code == 0 and "vane_connections_active" in fams


def test_compile_with_daemon(sock, capsys):
    code, out, _ = vane(capsys, "--socket", sock, "compile", "/etc/vaned", "--daemon")
    assert code == 0 and out.startswith(f"ok {HASH_B}\nlistener tcp 0.0.0.0:8080\n")
    code, out, _ = vane(capsys, "--socket", sock, "--json", "compile", "/etc/vaned", "--daemon")
    assert json.loads(out)["hash"] == HASH_B
    code, out, err = vane(capsys, "--socket", sock, "compile", "/etc/bad", "--daemon")
    assert code == 1 and err.splitlines()[0] == "rules/20-api.json: /0/flow: unknown plugin 'prxy'"
    code, _, err = vane(capsys, "--socket", sock, "compile", "x", "--daemon", "--config", "/etc/vaned")
    assert code == 64


def test_compile_offline(tmp_path, capsys):
    pytest.importorskip("vane.compile")
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10-hello.json").write_text(json.dumps(
        {"rule": "hello", "listen": ["127.0.0.1:8080"], "flow": {"respond": {"input": {"status": 200}}}}))
    code, out, _ = vane(capsys, "compile", str(tmp_path))
    assert code == 0 and "hello" in out and "respond" in out
    code, out, _ = vane(capsys, "--json", "compile", str(tmp_path))
    assert code == 0 and json.loads(out)["hash"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rule": "bad", "listen": [":0"], "flow": {"respond": {}}}))
    code, out, err = vane(capsys, "compile", str(bad))
    assert code == 1 and err.startswith("bad.json: /listen/0: ")
    code, out, err = vane(capsys, "compile", str(tmp_path / "missing"))
    assert code == 1 and "no such file" in err


def test_tail_flow_until_stream_end(sock, daemon, capsys):
    def produce():
        wait_until(lambda: daemon.flow_log.subscribers == 1)
        daemon.flow_log.record(flow_entry(1))
        daemon.flow_log.record(flow_entry(2, status=502, outcome="error"))
        gevent.sleep(0.05)
        daemon.flow_log.hub.close("shutdown")

    gevent.spawn(produce)
    code, out, err = vane(capsys, "--socket", sock, "tail", "flow")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2
    assert "00000001 blog GET blog.example.com/post/1 -> 200 finished 1.4ms" in lines[0]
    assert "-> 502 error" in lines[1]
    assert "stream ended: shutdown" in err


def test_tail_log_json(sock, daemon, capsys):
    def produce():
        wait_until(lambda: daemon.log_hub.subscribers == 1)
        daemon.log_hub.publish({"ts": 1.0, "level": "INFO", "logger": "vane.daemon", "message": "reloaded"})
        daemon.log_hub.close("shutdown")

    gevent.spawn(produce)
    code, out, _ = vane(capsys, "--socket", sock, "--json", "tail", "log")
    assert code == 0 and json.loads(out)["message"] == "reloaded"


def test_unreachable_exits_2(tmp_path, capsys):
    code, out, err = vane(capsys, "--socket", str(tmp_path / "none.sock"), "ping")
    assert code == 2 and "not reachable" in err
    code, _, err = vane(capsys, "--http", "http://127.0.0.1:9", "stats")
    assert code == 2


def test_http_transport_with_token_env(daemon, capsys, monkeypatch):
    srv = start_http(daemon, token="tok")
    try:
        url = f"http://127.0.0.1:{srv.port}"
        monkeypatch.setenv("MY_TOKEN", "tok")
        code, out, _ = vane(capsys, "--http", url, "--token-env", "MY_TOKEN", "reload")
        assert (code, out) == (0, f"unchanged {HASH_A}\n")
        monkeypatch.setenv("VANE_MGMT_HTTP_TOKEN", "tok")
        assert vane(capsys, "--http", url, "get", "listeners")[0] == 0
        monkeypatch.setenv("VANE_MGMT_HTTP_TOKEN", "wrong")
        code, _, err = vane(capsys, "--http", url, "ping")
        assert code == 1 and "Unauthorized" in err
    finally:
        srv.stop()


def run_cli(*argv, **kw):
    return subprocess.Popen([*VANE, *argv], cwd=str(ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_entry_point_exit_codes(sock):
    p = run_cli("--socket", sock, "--json", "ping")
    out, _ = p.communicate(timeout=20)
    assert p.returncode == 0 and json.loads(out)["pong"] is True
    p = run_cli("get", "everything")
    _, err = p.communicate(timeout=20)
    assert p.returncode == 64 and "Usage:" in err
    p = run_cli("--socket", sock + ".nope", "stats")
    p.communicate(timeout=20)
    assert p.returncode == 2


def test_tail_flow_ctrl_c_exits_0(sock, daemon):
    p = run_cli("--socket", sock, "tail", "flow")
    try:
        assert wait_until(lambda: daemon.flow_log.subscribers == 1, timeout=15)
        daemon.flow_log.record(flow_entry(5))
        line = p.stdout.readline()
        assert "/post/5 -> 200" in line
        time.sleep(0.1)
        p.send_signal(signal.SIGINT)
        p.wait(timeout=10)
        assert p.returncode == 0
        assert wait_until(lambda: daemon.flow_log.subscribers == 0)
    finally:
        if p.poll() is None:
            p.kill()
        p.communicate()
