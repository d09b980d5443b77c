"""vaned's lifecycle (DESIGN.md §7): command line and exit codes, compile failures, SIGTERM drain
within the budget, sd_notify states."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time

import gevent
import pytest

from tests.support.backends import echo
from tests.support.config import proxy, rule
from tests.support.daemon import BIN, ROOT, VANED, clean_environ
from tests.support.net import connect, free_ports, recv_all, refused, wait_until

pytestmark = pytest.mark.timeout(60)


BROKEN = {"rule": "broken", "listen": ["127.0.0.1:8080"], "flow": {"prxy": {}}}
ERROR_LINE = r"rules/20-broken\.json: /flow/prxy: unknown plugin \"prxy\""


def run_vaned(*args: str, timeout: float = 10.0) -> subprocess.CompletedProcess:
    env = clean_environ()
    env["VANE_MGMT_HTTP_PORT"] = ""
    return subprocess.run([*VANED, *args], env=env, cwd=str(ROOT), capture_output=True, text=True,
                          timeout=timeout)


# -- command line --------------------------------------------------------------------------------

@pytest.mark.parametrize("entry", ["module", "script"])
def test_without_config_prints_the_hint_and_exits_64(entry):
    if entry == "module":
        res = run_vaned()
    else:  # the installed console script
        res = subprocess.run([str(BIN / "vaned")], capture_output=True, text=True, timeout=10)
    assert res.returncode == 64
    assert "vaned --config /etc/vaned" in res.stderr


def test_check_accepts_a_good_config(lab):
    lab.write_rule("10-fwd.json", rule("fwd", proxy("127.0.0.1:9"), listen="127.0.0.1:8080"))
    res = run_vaned("--config", str(lab.conf), "--check")
    assert res.returncode == 0, res.stderr
    assert re.match(r"ok [0-9a-f]{64} \(1 rules, 1 listeners\)", res.stdout)


def test_check_reports_a_broken_config_with_file_and_pointer(lab):
    lab.write_rule("10-fwd.json", rule("fwd", proxy("127.0.0.1:9"), listen="127.0.0.1:8080"))
    lab.write_rule("20-broken.json", BROKEN)
    res = run_vaned("--config", str(lab.conf), "--check")
    assert res.returncode == 1
    assert re.search(ERROR_LINE, res.stderr), res.stderr


def test_compile_failure_at_boot_exits_non_zero_with_the_errors(lab):
    lab.write_rule("20-broken.json", BROKEN)
    lab.write_rule("30-json.json", '{"rule": "half", ')
    d = lab.vaned(ready=False)
    assert d.wait() != 0
    assert re.search(ERROR_LINE, d.stderr), d.stderr
    assert re.search(r"rules/30-json\.json: /: invalid JSON", d.stderr), d.stderr
    assert d.find("serving graph") == -1


# -- SIGTERM ------------------------------------------------------------------------------------

def stream(sock: socket.socket, chunk: bytes, count: int, pause: float) -> int:
    """Send ``count`` chunks with a pause between them, then half-close; bytes sent."""
    sent = 0
    for _ in range(count):
        sock.sendall(chunk)
        sent += len(chunk)
        gevent.sleep(pause)
    sock.shutdown(socket.SHUT_WR)
    return sent


def test_sigterm_drains_the_transfer_in_flight_then_exits_0(lab):
    backend = lab.tcp(echo)
    (port,) = free_ports(1)
    d = lab.vaned({"10-fwd.json": rule("fwd", proxy(backend.target), listen=f"127.0.0.1:{port}")},
                  env={"VANE_DRAIN_TIMEOUT_SECS": "10"})
    d.wait_listening(port)
    chunk = os.urandom(32 * 1024)
    with connect(port, timeout=10) as s:
        sender = gevent.spawn(stream, s, chunk, 40, 0.025)  # ~1 s of traffic
        gevent.sleep(0.2)
        d.signal(signal.SIGTERM)
        # the count is logged before a probe below can be accepted: only the transfer is in it
        d.wait_log(r"draining 1 connection")
        assert wait_until(lambda: refused(port), timeout=1.0)  # new connections are refused at once
        got = recv_all(s)
        done = time.monotonic()
        sent = sender.get(timeout=5)
    assert len(got) == sent == 40 * len(chunk)
    assert got == chunk * 40
    assert d.wait(timeout=5) == 0
    assert time.monotonic() - done < 1.0  # exits as soon as the last connection ends
    assert d.find(r"drain budget exhausted") == -1


def test_sigterm_aborts_what_outlasts_the_drain_budget_and_exits_0(lab):
    backend = lab.tcp(echo)
    (port,) = free_ports(1)
    d = lab.vaned({"10-fwd.json": rule("fwd", proxy(backend.target), listen=f"127.0.0.1:{port}")},
                  env={"VANE_DRAIN_TIMEOUT_SECS": "1"})
    d.wait_listening(port)
    errors: list[OSError] = []
    with connect(port, timeout=10) as s:
        def endless() -> None:
            try:
                while True:
                    s.sendall(b"x" * 4096)
                    gevent.sleep(0.01)
            except OSError as exc:
                errors.append(exc)

        sender = gevent.spawn(endless)
        gevent.sleep(0.1)
        d.signal(signal.SIGTERM)
        start = time.monotonic()
        try:
            while s.recv(65536):
                pass
        except OSError as exc:
            errors.append(exc)
        aborted = time.monotonic() - start
        sender.join(timeout=2)
    # cut with RST, never a clean end; the reset is reported once, to the sender or the reader
    assert any(isinstance(e, ConnectionResetError) for e in errors), errors
    assert 0.8 <= aborted <= 2.5, aborted
    assert d.wait(timeout=5) == 0
    assert d.find(r"drain budget exhausted: aborting 1 connection") >= 0


# -- sd_notify ----------------------------------------------------------------------------------

def test_sd_notify_ready_reloading_stopping(lab):
    path = str(lab.base / "notify")
    notify = lab.hold(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
    notify.bind(path)
    notify.settimeout(5)
    backend = lab.tcp(echo)
    (port,) = free_ports(1)
    d = lab.vaned({"10-fwd.json": rule("fwd", proxy(backend.target), listen=f"127.0.0.1:{port}")},
                  env={"NOTIFY_SOCKET": path})
    assert notify.recv(4096) == b"READY=1"
    assert not refused(port)  # READY=1 means serving: the listener accepts already
    res = d.cli("reload")
    assert res.returncode == 0, res.stderr
    reloading = notify.recv(4096).decode()
    assert reloading.startswith("RELOADING=1\nMONOTONIC_USEC=")
    usec = int(reloading.split("=")[-1])
    assert abs(usec - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 10_000_000
    assert notify.recv(4096) == b"READY=1"
    d.signal(signal.SIGTERM)
    assert notify.recv(4096) == b"STOPPING=1"
    assert d.wait() == 0


def test_sigterm_with_udp_sessions_open_exits_at_once(lab):
    backend = lab.udp_echo()
    (port,) = free_ports(1, "udp")
    # sessions idle out only after 30 s; the drain must not wait for them (their socket is gone)
    d = lab.vaned({"10-dns.json": rule("dns", proxy(backend.target, idle_timeout=30), listen=f"udp:127.0.0.1:{port}")},
                  env={"VANE_DRAIN_TIMEOUT_SECS": "10"})
    d.wait_listening(port, "udp")
    clients = [lab.hold(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) for _ in range(3)]
    for i, c in enumerate(clients):
        c.settimeout(3)
        c.sendto(b"q%d" % i, ("127.0.0.1", port))
        assert c.recvfrom(100)[0] == b"echo:q%d" % i
    assert d.cli_json("stats")["connections"]["active"] == 3
    start = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait(timeout=5) == 0
    assert time.monotonic() - start < 1.5
    assert d.find(r"drain budget exhausted") == -1
    assert "Traceback" not in d.stderr


def test_shutdown_verb_drains_like_sigterm(lab):
    backend = lab.tcp(echo)
    (port,) = free_ports(1)
    d = lab.vaned({"10-fwd.json": rule("fwd", proxy(backend.target), listen=f"127.0.0.1:{port}")})
    d.wait_listening(port)
    with connect(port) as s:
        s.sendall(b"before")
        res = d.cli("shutdown")
        assert res.returncode == 0, res.stderr
        assert wait_until(lambda: refused(port), timeout=2.0)
        s.sendall(b" and after")
        s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == b"before and after"
    assert d.wait(timeout=5) == 0
