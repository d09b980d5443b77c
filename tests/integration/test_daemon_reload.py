"""Hot reload of a real vaned (DESIGN.md §7): inotify with a 50 ms debounce, `vane reload`,
SIGHUP; listeners added and removed; in-flight connections untouched; broken configs refused."""

from __future__ import annotations

import os
import re
import signal
import socket
import time

import gevent
import pytest

from tests.support.backends import echo, tagged
from tests.support.config import proxy, rule
from tests.support.net import accepts, connect, free_ports, recv_all, recv_line, refused, wait_until

pytestmark = pytest.mark.timeout(60)


HASH = re.compile(r"^(reloaded|unchanged) ([0-9a-f]{64})$")


def test_added_rule_file_listens_within_a_second(lab):
    backend = lab.tcp(echo)
    old, new = free_ports(2)
    d = lab.vaned({"10-old.json": rule("old", proxy(backend.target), listen=f"127.0.0.1:{old}")})
    d.wait_listening(old)
    assert refused(new)
    start = time.monotonic()
    lab.write_rule("20-new.json", rule("new", proxy(backend.target), listen=f"127.0.0.1:{new}"))
    assert wait_until(lambda: accepts(new), timeout=1.0), d.stderr
    assert time.monotonic() - start < 1.0
    with connect(new) as s:
        s.sendall(b"fresh")
        s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == b"fresh"
    d.wait_log(r"reloaded: graph \w+ \(\+1 -0 listeners\)")


def test_removed_rule_stops_accepting_but_inflight_streams_to_the_end(lab):
    backend = lab.tcp(echo)
    keep, gone = free_ports(2)
    d = lab.vaned({"10-keep.json": rule("keep", proxy(backend.target), listen=f"127.0.0.1:{keep}"),
                   "20-gone.json": rule("gone", proxy(backend.target), listen=f"127.0.0.1:{gone}")})
    d.wait_listening(gone)
    chunk = os.urandom(64 * 1024)
    with connect(gone) as s:
        s.sendall(chunk)
        got = b""
        while len(got) < len(chunk):
            got += s.recv(65536)
        lab.remove_rule("20-gone.json")
        assert wait_until(lambda: refused(gone), timeout=2.0), d.stderr
        rows = d.listeners()
        assert rows[f"127.0.0.1:{gone}"]["state"] == "draining"
        assert rows[f"127.0.0.1:{gone}"]["connections"] == 1
        # the connection opened before keeps streaming, in both directions, to its end
        sent = len(chunk)
        for _ in range(20):
            s.sendall(chunk)
            sent += len(chunk)
            gevent.sleep(0.01)
        s.shutdown(socket.SHUT_WR)
        got += recv_all(s)
        assert got == chunk * (sent // len(chunk))
    assert accepts(keep)  # the unchanged listener was never disturbed
    assert wait_until(lambda: f"127.0.0.1:{gone}" not in d.listeners(), timeout=3.0)


def test_changed_rule_applies_to_new_connections_only(lab):
    a, b = lab.tcp(tagged(b"A")), lab.tcp(tagged(b"B"))
    (port,) = free_ports(1)
    d = lab.vaned({"10-fwd.json": rule("fwd", proxy(a.target), listen=f"127.0.0.1:{port}")})
    d.wait_listening(port)
    with connect(port) as old:
        assert recv_line(old) == b"A\r\n"
        mark = len(d.lines)
        lab.write_rule("10-fwd.json", rule("fwd", proxy(b.target), listen=f"127.0.0.1:{port}"))
        d.wait_log(r"reloaded: graph \w+ \(\+0 -0 listeners\)", since=mark)
        with connect(port) as new:
            assert recv_line(new) == b"B\r\n"
        old.sendall(b"still on A")
        old.shutdown(socket.SHUT_WR)
        assert recv_all(old) == b"still on A"
    assert d.count(r"listening on tcp") == 1  # the listener was kept, not rebound


def test_broken_rule_file_keeps_the_old_config_and_reload_reports_it(lab):
    backend = lab.tcp(echo)
    port, other = free_ports(2)
    d = lab.vaned({"10-fwd.json": rule("fwd", proxy(backend.target), listen=f"127.0.0.1:{port}")})
    d.wait_listening(port)
    before = d.cli("reload")
    assert before.returncode == 0 and HASH.match(before.stdout.strip())
    old_hash = before.stdout.split()[1]
    mark = len(d.lines)
    lab.write_rule("90-broken.json", rule("broken", {"prxy": {}}, listen=f"127.0.0.1:{other}"))
    d.wait_log(r"reload failed, the running configuration stays: rules/90-broken\.json: /flow/prxy: unknown plugin",
               since=mark)
    res = d.cli("reload")
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert re.search(r"rules/90-broken\.json: /flow/prxy: unknown plugin", res.stdout + res.stderr)
    # the old graph and listeners keep serving
    assert refused(other)
    with connect(port) as s:
        s.sendall(b"old config")
        s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == b"old config"
    assert d.cli_json("stats")["graph_hash"] == old_hash


def test_touch_without_change_is_unchanged(lab):
    backend = lab.tcp(echo)
    (port,) = free_ports(1)
    d = lab.vaned({"10-fwd.json": rule("fwd", proxy(backend.target), listen=f"127.0.0.1:{port}")})
    d.wait_listening(port)
    graph_hash = d.cli_json("stats")["graph_hash"]
    os.utime(lab.conf / "rules" / "10-fwd.json")
    gevent.sleep(0.2)  # past the debounce: the watcher's reload found the same hash
    res = d.cli("reload")
    assert res.returncode == 0
    assert res.stdout.strip() == f"unchanged {graph_hash}"
    assert d.count(r"reloaded: graph") == 0
    assert d.count(r"listening on tcp") == 1


def test_sighup_reloads(lab):
    backend = lab.tcp(echo)
    old, new = free_ports(2)
    # a long debounce keeps the watcher out of the way: only the signal can reload in time
    d = lab.vaned({"10-old.json": rule("old", proxy(backend.target), listen=f"127.0.0.1:{old}")},
                  env={"VANE_RELOAD_DEBOUNCE_MS": "60000"})
    d.wait_listening(old)
    lab.write_rule("20-new.json", rule("new", proxy(backend.target), listen=f"127.0.0.1:{new}"))
    gevent.sleep(0.2)
    assert refused(new)
    d.signal(signal.SIGHUP)
    d.wait_listening(new, timeout=2.0)
    assert accepts(new)
    assert d.running()


def test_no_reload_once_shutting_down(lab):
    backend = lab.tcp(echo)
    old, new = free_ports(2)
    d = lab.vaned({"10-old.json": rule("old", proxy(backend.target), listen=f"127.0.0.1:{old}")},
                  env={"VANE_DRAIN_TIMEOUT_SECS": "10"})
    d.wait_listening(old)
    with connect(old) as s:
        s.sendall(b"keeps the drain going")
        d.signal(signal.SIGTERM)
        d.wait_log(r"draining 1 connection")
        lab.write_rule("20-new.json", rule("new", proxy(backend.target), listen=f"127.0.0.1:{new}"))
        d.signal(signal.SIGHUP)
        d.wait_log(r"reload ignored: vaned is shutting down")
        res = d.cli("reload")
        assert res.returncode == 1
        assert "shutting down" in res.stdout + res.stderr
        assert refused(new) and refused(old)  # SIGTERM means no new connections anywhere
        assert d.find(r"reloaded: graph") == -1
        s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == b"keeps the drain going"
    assert d.wait(timeout=5) == 0
