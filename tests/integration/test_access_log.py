"""The access log end to end: a real vaned, real clients (curl, httpx over HTTP/1.1 and HTTP/2,
raw sockets), lines read back from the file and parsed as the tools that read them do (a
combined-log regex, ``json.loads``); logrotate's rename followed by SIGUSR1 or ``vane
reopen-logs``, with one process and with two workers; start-up errors for a path that cannot
be written."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support.config import http_proxy, rule
from tests.support.daemon import ROOT, VANE, VANED, Lab, Vaned
from tests.support.http_backend import Backend
from tests.support.net import connect, curl, free_port, read_for, wait_until

pytestmark = pytest.mark.timeout(90)

# nginx's combined format, as log analysers parse it
COMBINED = re.compile(
    r'^(?P<remote>\S+) (?P<ident>\S+) (?P<user>\S+) \[(?P<time>[^\]]+)\] '
    r'"(?P<method>\S+) (?P<uri>\S+) (?P<protocol>[^"]+)" (?P<status>\d{3}) (?P<bytes>\d+) '
    r'"(?P<referer>[^"]*)" "(?P<agent>[^"]*)"$')
FAST_FLUSH = {"VANE_ACCESS_LOG_FLUSH_MS": "50"}


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_lines(path: Path, n: int, timeout: float = 5.0) -> list[str]:
    got = wait_until(lambda: len(lines(path)) >= n and lines(path), timeout)
    assert got and len(got) >= n, f"{path}: {len(lines(path))} lines, wanted {n}"
    return got


def start(lab: Lab, env: dict[str, str], backend: Backend | None = None) -> tuple[Vaned, int]:
    port = free_port()
    rules = {"10-respond.json": rule("hello", {"respond": {"input": {"status": 201, "body": "hello"}}},
                                     listen=f"127.0.0.1:{port}", match={"req.path": {"prefix": "/hello"}})}
    if backend is not None:
        rules["20-proxy.json"] = rule("api", http_proxy(backend.url), listen=f"127.0.0.1:{port}")
    d = lab.vaned(rules, env={**FAST_FLUSH, **env})
    d.wait_accepting(port)
    return d, port


@pytest.fixture
def lab():
    with Lab() as lab_:
        yield lab_


@pytest.fixture
def backend(lab):
    b = Backend("b1")
    lab.on_close(b.stop)
    return b


def test_combined_lines_parse_with_the_combined_regex(lab, backend):
    path = lab.base / "access.log"
    d, port = start(lab, {"VANE_ACCESS_LOG": str(path)}, backend)
    res = curl("-o", "/dev/null", "-A", "curl-test/1.0", "-e", "http://ref.example/page",
               f"http://127.0.0.1:{port}/hello?x=1")
    assert res.returncode == 0, res.stderr
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        r = client.get("/api/item", headers={"user-agent": "httpx-test"})
        assert r.status_code == 200
        body = r.content
    got = wait_lines(path, 2)
    first, second = (COMBINED.match(line) for line in got[:2])
    assert first and second, got
    assert first["remote"] == "127.0.0.1" and first["method"] == "GET" and first["uri"] == "/hello?x=1"
    assert first["protocol"] == "HTTP/1.1" and first["status"] == "201" and first["bytes"] == "5"
    assert first["referer"] == "http://ref.example/page" and first["agent"] == "curl-test/1.0"
    assert re.fullmatch(r"\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}", first["time"])
    assert second["uri"] == "/api/item" and second["status"] == "200" and int(second["bytes"]) == len(body)
    assert second["referer"] == "-" and second["agent"] == "httpx-test"
    assert d.mgmt("stats")["access_log"]["lines"] == 2


def test_a_hostile_request_cannot_forge_a_line_or_break_a_field(lab):
    path = lab.base / "access.log"
    _d, port = start(lab, {"VANE_ACCESS_LOG": str(path)})
    forged = '1.2.3.4 - - [01/Jan/2026:00:00:00 +0000] "GET /admin HTTP/1.1" 200 1 "-" "x"'
    with connect(port) as sock:
        sock.sendall(b'GET /hello/%22q HTTP/1.1\r\nHost: x\r\nUser-Agent: a" b\\c\xc3\xa9\r\n'
                     b'Referer: r"\t' + forged.encode() + b'\r\nConnection: close\r\n\r\n')
        assert read_for(sock, 2.0).startswith(b"HTTP/1.1 201")
    (line,) = wait_lines(path, 1)
    m = COMBINED.match(line)
    assert m, line
    assert m["agent"] == "a\\x22 b\\x5Cc\\xC3\\xA9"
    assert m["referer"].startswith("r\\x22\\x09") and m["referer"].count('"') == 0
    assert m["uri"] == "/hello/%22q"


def test_json_lines_over_http1_and_http2(lab, backend):
    path = lab.base / "access.json"
    d, port = start(lab, {"VANE_ACCESS_LOG": str(path), "VANE_ACCESS_LOG_FORMAT": "json"}, backend)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as h1:
        assert h1.get("/api/one", headers={"referer": "http://r/"}).status_code == 200
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10, http1=False, http2=True) as h2:
        r = h2.get("/hello/two?k=v", headers={"user-agent": "h2-client"})
        assert r.status_code == 201 and r.http_version == "HTTP/2"
    one, two = (json.loads(line) for line in wait_lines(path, 2))
    assert one["client_ip"] == "127.0.0.1"
    assert set(one) >= {"time", "remote", "method", "host", "uri", "status", "bytes", "duration_ms", "upstream",
                        "upstream_ms", "rule", "user_agent", "referer", "request_id"}
    assert one["method"] == "GET" and one["uri"] == "/api/one" and one["status"] == 200
    assert one["rule"] == "api" and one["upstream"] in (backend.url, f"127.0.0.1:{backend.port}"), one
    assert one["upstream_ms"] is not None and one["upstream_ms"] >= 0 and one["duration_ms"] >= one["upstream_ms"]
    assert one["referer"] == "http://r/" and one["remote"] == "127.0.0.1" and one["protocol"] == "HTTP/1.1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", one["time"])
    assert two["protocol"] == "HTTP/2.0" and two["uri"] == "/hello/two?k=v" and two["status"] == 201
    assert two["bytes"] == 5 and two["user_agent"] == "h2-client" and two["rule"] == "hello"
    assert two["upstream"] is None and two["upstream_ms"] is None
    conn_id, seq = two["request_id"].split("/")
    assert len(conn_id) == 36 and int(seq) >= 1
    assert d.mgmt("stats")["access_log"]["dropped"] == 0


def test_a_template_of_kv_keys(lab):
    path = lab.base / "access.log"
    fmt = "{{log.remote}}|{{req.method}}|{{req.host}}|{{req.header.x-trace}}|{{log.status}}|{{log.rule}}|{{nope}}"
    _d, port = start(lab, {"VANE_ACCESS_LOG": str(path), "VANE_ACCESS_LOG_FORMAT": fmt})
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        assert client.get("/hello", headers={"x-trace": 'abc"1', "host": "site.example"}).status_code == 201
    (line,) = wait_lines(path, 1)
    assert line == '127.0.0.1|GET|site.example|abc\\x221|201|hello|'


def test_a_bad_template_is_a_startup_error(lab):
    d = lab.vaned({"10.json": rule("r", {"respond": {}}, listen=f"127.0.0.1:{free_port()}")},
                  env={"VANE_ACCESS_LOG": "stdout", "VANE_ACCESS_LOG_FORMAT": "{{req.method"}, ready=False)
    assert d.wait() == 1
    assert "VANE_ACCESS_LOG_FORMAT" in d.stderr and "Traceback" not in d.stderr


@pytest.mark.parametrize("where", ["missing-dir", "a-directory"])
def test_an_unwritable_path_is_a_startup_error(lab, where):
    target = lab.base / "nodir" / "access.log" if where == "missing-dir" else lab.base
    d = lab.vaned({"10.json": rule("r", {"respond": {}}, listen=f"127.0.0.1:{free_port()}")},
                  env={"VANE_ACCESS_LOG": str(target)}, ready=False)
    assert d.wait() == 1
    err = d.stderr
    assert f"VANE_ACCESS_LOG: cannot open {target} for appending" in err, err
    assert "Traceback" not in err
    assert d.find(r"serving graph") == -1


def test_a_relative_path_is_refused(lab):
    d = lab.vaned({"10.json": rule("r", {"respond": {}}, listen=f"127.0.0.1:{free_port()}")},
                  env={"VANE_ACCESS_LOG": "access.log"}, ready=False)
    assert d.wait() == 1
    assert "VANE_ACCESS_LOG" in d.stderr and "absolute" in d.stderr and "Traceback" not in d.stderr


def test_check_reports_an_unwritable_path_without_creating_files(lab):
    target = lab.base / "nodir" / "access.log"
    (lab.conf / "rules" / "10.json").write_text(json.dumps(rule("r", {"respond": {}}, listen="127.0.0.1:9")))
    d = lab.vaned(env={"VANE_ACCESS_LOG": str(target)}, ready=False,
                  argv=[*VANED, "--config", str(lab.conf), "--check"])
    assert d.wait() == 1
    assert "VANE_ACCESS_LOG" in d.stderr and not target.parent.exists()


def test_stdout_destination(lab):
    _d, port = start(lab, {"VANE_ACCESS_LOG": "stdout", "VANE_ACCESS_LOG_FORMAT": "json"})
    assert httpx.get(f"http://127.0.0.1:{port}/hello", timeout=10).status_code == 201
    got = wait_until(lambda: [json.loads(x) for x in _d.stdout.splitlines() if x.startswith("{")], 5.0)
    assert got and got[0]["status"] == 201


def test_off_by_default(lab):
    d, port = start(lab, {})
    assert httpx.get(f"http://127.0.0.1:{port}/hello", timeout=10).status_code == 201
    assert d.mgmt("stats")["access_log"] is None
    assert d.cli("reopen-logs").stdout.strip() == "no access log file (VANE_ACCESS_LOG is off)"


def test_lines_pending_at_exit_are_written(lab):
    path = lab.base / "access.log"
    d, port = start(lab, {"VANE_ACCESS_LOG": str(path), "VANE_ACCESS_LOG_FLUSH_MS": "60000"})
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        for _ in range(3):
            assert client.get("/hello").status_code == 201
    assert lines(path) == []           # buffered: the flush interval is a minute
    d.signal(signal.SIGTERM)
    assert d.wait() == 0
    assert len(lines(path)) == 3


def rotate_and_check(d: Vaned, path: Path, port: int, reopen, workers: int = 1) -> None:
    """logrotate's create mode: rename the file, then ask for a reopen; new lines land in a
    new file at the old path, lines written before stay in the rotated one."""
    before = 4 * workers
    for _ in range(before):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:  # new connections
            assert client.get("/hello").status_code == 201
    wait_lines(path, before)
    rotated = path.with_name(path.name + ".1")
    os.rename(path, rotated)
    reopen()
    assert wait_until(path.exists, 5.0), "the access log was not reopened"
    for _ in range(before):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            assert client.get("/hello/after").status_code == 201
    fresh = wait_lines(path, before)
    assert all("/hello/after" in line for line in fresh), fresh
    assert len(lines(rotated)) == before and all("/hello/after" not in line for line in lines(rotated))


def test_sigusr1_reopens_after_rotation(lab):
    path = lab.base / "access.log"
    d, port = start(lab, {"VANE_ACCESS_LOG": str(path)})
    rotate_and_check(d, path, port, lambda: d.signal(signal.SIGUSR1))
    assert d.running()


def test_vane_reopen_logs_after_rotation(lab):
    path = lab.base / "access.log"
    d, port = start(lab, {"VANE_ACCESS_LOG": str(path)})

    def reopen() -> None:
        res = d.cli("reopen-logs")
        assert res.returncode == 0 and res.stdout.strip() == f"reopened {path}", (res.stdout, res.stderr)

    rotate_and_check(d, path, port, reopen)


@pytest.mark.parametrize("how", ["cli", "sigusr1"])
def test_reopen_reaches_every_worker(lab, how):
    path = lab.base / "access.log"
    d, port = start(lab, {"VANE_ACCESS_LOG": str(path), "VANE_WORKERS": "2"})
    d.wait_log(r"worker 1 .*serving|serving graph", 10)

    def reopen() -> None:
        if how == "sigusr1":
            d.signal(signal.SIGUSR1)       # the master's pid, as logrotate's postrotate would
            return
        res = d.cli("reopen-logs", "--json")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout) == {"access_log": str(path), "reopened": True, "workers": 2}

    rotate_and_check(d, path, port, reopen, workers=2)
    stats = d.mgmt("stats")
    assert all(w["state"] == "serving" for w in stats["workers"])
    assert stats["access_log"]["lines"] == 16 and stats["access_log"]["dropped"] == 0


def test_reopen_of_an_unwritable_path_keeps_the_old_file(lab):
    logs = lab.base / "logs"
    logs.mkdir()
    path = logs / "access.log"
    d, port = start(lab, {"VANE_ACCESS_LOG": str(path)})
    os.rename(logs, lab.base / "logs.old")       # the directory is gone: the path cannot be opened
    res = d.cli("reopen-logs")
    assert res.returncode == 1 and "reopen_logs" in res.stderr and "Traceback" not in res.stderr
    assert httpx.get(f"http://127.0.0.1:{port}/hello", timeout=10).status_code == 201
    assert wait_lines(lab.base / "logs.old" / "access.log", 1)


LOGROTATE = shutil.which("logrotate") or ("/usr/sbin/logrotate" if os.path.exists("/usr/sbin/logrotate") else None)


@pytest.mark.skipif(LOGROTATE is None, reason="logrotate is not installed")
def test_the_packaged_logrotate_config_rotates_a_running_daemon(lab):
    """debian/vane.logrotate run by logrotate itself, with its paths pointed at the lab: the
    postrotate's ``vane reopen-logs`` reaches both workers."""
    logs = lab.base / "log"
    logs.mkdir()
    path = logs / "access.log"
    d, port = start(lab, {"VANE_ACCESS_LOG": str(path), "VANE_WORKERS": "2"})
    shipped = (ROOT / "debian" / "vane.logrotate").read_text()
    vane = " ".join([*VANE, "reopen-logs"])
    conf = (shipped.replace("/var/log/vaned/", f"{logs}/")
            .replace("\tsu vaned vaned\n", "").replace("create 0640 vaned vaned", "create 0640")
            .replace("systemctl is-active --quiet vaned.service", f"kill -0 {d.pid}")
            .replace("/usr/bin/vane reopen-logs", f"cd {ROOT} && VANE_MGMT_UNIX={d.sock_path} {vane}"))
    assert f"{logs}/*.log {{" in conf and "reopen-logs" in conf and "su vaned" not in conf
    (lab.base / "logrotate.conf").write_text(conf)
    for _ in range(4):
        assert httpx.get(f"http://127.0.0.1:{port}/hello", timeout=10).status_code == 201
    wait_lines(path, 4)
    res = subprocess.run([LOGROTATE, "-f", "-s", str(lab.base / "logrotate.state"), str(lab.base / "logrotate.conf")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert len(lines(logs / "access.log.1")) == 4
    for _ in range(6):
        assert httpx.get(f"http://127.0.0.1:{port}/hello/after", timeout=10).status_code == 201
    fresh = wait_lines(path, 6)
    assert all("/hello/after" in line for line in fresh)
    assert len(lines(logs / "access.log.1")) == 4
