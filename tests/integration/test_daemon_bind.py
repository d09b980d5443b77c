"""Binding listeners (DESIGN.md §7): retry with backoff, giving up alone, the boot health check,
and systemd socket activation (LISTEN_FDS) instead of binding."""

from __future__ import annotations

import socket
import sys
import time

import gevent
import pytest

from tests.support.backends import echo
from tests.support.config import proxy, rule
from tests.support.net import connect, free_ports, recv_all, refused, wait_until

pytestmark = pytest.mark.timeout(60)


def round_trip(port: int, msg: bytes = b"through vaned") -> bytes:
    with connect(port) as s:
        s.sendall(msg)
        s.shutdown(socket.SHUT_WR)
        return recv_all(s)


def test_port_released_after_half_a_second_gets_bound(lab):
    backend = lab.tcp(echo)
    (port,) = free_ports(1)
    holder = lab.listening_socket(port)
    d = lab.vaned({"10-fwd.json": rule("fwd", proxy(backend.target), listen=f"127.0.0.1:{port}")},
                  env={"VANE_BIND_BACKOFF_INITIAL_MS": "100", "VANE_BIND_BACKOFF_MAX_MS": "5000",
                       "VANE_BIND_MAX_ATTEMPTS": "10"})
    d.wait_log(rf"listener tcp 127\.0\.0\.1:{port}: bind failed \(Address already in use")
    gevent.sleep(0.5)
    holder.close()
    d.wait_listening(port, timeout=3.0)
    assert round_trip(port) == b"through vaned"
    row = d.listeners()[f"127.0.0.1:{port}"]
    assert row["state"] == "listening"
    assert 3 <= row["bind_attempts"] <= 6  # 100, 200, 400 ms ... apart
    assert row["last_error"] is None


def test_port_never_released_gives_up_while_the_others_serve(lab):
    backend = lab.tcp(echo)
    good, taken = free_ports(2)
    lab.listening_socket(taken)
    d = lab.vaned({"10-good.json": rule("good", proxy(backend.target), listen=f"127.0.0.1:{good}"),
                   "20-taken.json": rule("taken", proxy(backend.target), listen=f"127.0.0.1:{taken}")},
                  env={"VANE_BIND_BACKOFF_INITIAL_MS": "50", "VANE_BIND_MAX_ATTEMPTS": "3"})
    d.wait_listening(good)
    d.wait_log(rf"listener tcp 127\.0\.0\.1:{taken} gave up after 3 attempt\(s\)", timeout=3.0)
    assert round_trip(good) == b"through vaned"
    rows = d.listeners()
    assert rows[f"127.0.0.1:{good}"]["state"] == "listening"
    failed = rows[f"127.0.0.1:{taken}"]
    assert failed["state"] == "failed"
    assert failed["bind_attempts"] == 3
    assert "Address already in use" in failed["last_error"]
    gevent.sleep(0.3)
    assert d.running()  # one listener failing is not fatal


@pytest.mark.parametrize("attempts", ["2", "100"])
def test_no_listener_bound_within_the_boot_health_timeout_exits_non_zero(lab, attempts):
    (port,) = free_ports(1)
    lab.listening_socket(port)
    start = time.monotonic()
    d = lab.vaned({"10-taken.json": rule("taken", proxy("127.0.0.1:9"), listen=f"127.0.0.1:{port}")},
                  env={"VANE_BOOT_HEALTH_TIMEOUT_SECS": "1", "VANE_BIND_BACKOFF_INITIAL_MS": "100",
                       "VANE_BIND_MAX_ATTEMPTS": attempts})
    rc = d.wait(timeout=5)
    assert rc != 0
    assert 0.9 <= time.monotonic() - start < 4.0
    assert d.find(r"no listener could bind within 1\.0s") >= 0, d.stderr


# -- socket activation ----------------------------------------------------------------------------

# Puts the inherited socket on fd 3 and sets LISTEN_PID to its own pid (kept by exec), as systemd does.
WRAPPER = ("import os, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); fd != 3 and os.close(fd); "
           "os.environ['LISTEN_PID'] = str(os.getpid()); os.execv(sys.executable, sys.argv[2:])")


def test_socket_activation_serves_on_the_passed_socket_without_binding(lab):
    backend = lab.tcp(echo)
    (port,) = free_ports(1)
    listening = lab.listening_socket(port)
    fd = listening.fileno()
    argv = [sys.executable, "-c", WRAPPER, str(fd),
            sys.executable, "-m", "vane.daemon.main", "--config", str(lab.conf)]
    d = lab.vaned({"10-fwd.json": rule("fwd", proxy(backend.target), listen=f"127.0.0.1:{port}")},
                  env={"LISTEN_FDS": "1"}, argv=argv, pass_fds=(fd,))
    listening.close()  # from now on only vaned holds the socket
    d.wait_log(rf"listening on tcp 127\.0\.0\.1:{port} \(socket activation\)")
    assert round_trip(port, b"activated") == b"activated"
    row = d.listeners()[f"127.0.0.1:{port}"]
    assert row["socket_activated"] is True
    assert row["bind_attempts"] == 0
    assert d.find(r"bind failed") == -1
    assert d.find(r"matches no listen address") == -1


def test_socket_activation_for_another_pid_is_ignored(lab):
    backend = lab.tcp(echo)
    (port,) = free_ports(1)
    d = lab.vaned({"10-fwd.json": rule("fwd", proxy(backend.target), listen=f"127.0.0.1:{port}")},
                  env={"LISTEN_FDS": "1", "LISTEN_PID": "1"})
    d.wait_listening(port)
    assert round_trip(port) == b"through vaned"
    assert d.listeners()[f"127.0.0.1:{port}"]["socket_activated"] is False
    assert wait_until(lambda: not refused(port), timeout=1.0)
