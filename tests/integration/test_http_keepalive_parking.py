"""Idle HTTP/1 keep-alive connections wait without a greenlet and still serve, expire and drain."""

import signal
import socket
import time

import pytest

from tests.support.config import rule
from tests.support.net import free_port, wait_until

pytestmark = pytest.mark.timeout(60)


REQ = b"GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n"


def respond_rule(port):
    return rule("web", {"respond": {"input": {"body": "hi {{req.path}}"}}}, listen=f"127.0.0.1:{port}")


def request(sock, data=REQ):
    sock.sendall(data)
    buf = b""
    while not buf.endswith(b"hi /x"):
        chunk = sock.recv(4096)
        assert chunk, buf
        buf += chunk
    return buf


def test_parked_connections_serve_again_and_show_as_idle(lab):
    port = free_port()
    d = lab.vaned({"a.json": respond_rule(port)}, env={"VANE_SEC_KEEPALIVE_TIMEOUT_SECS": "30"})
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    for s in socks:
        assert request(s).startswith(b"HTTP/1.1 200")
    conns = wait_until(lambda: [c for c in d.cli_json("get", "connections")["connections"] if c["idle"]]
                       if len(d.cli_json("get", "connections")["connections"]) == 20 else None)
    assert len(conns) == 20
    for s in socks:  # a parked connection wakes up for its next request, pipelined or not
        assert request(s).startswith(b"HTTP/1.1 200")
    assert request(socks[0], REQ * 2).count(b"HTTP/1.1 200") >= 1
    for s in socks:
        s.close()
    wait_until(lambda: not d.cli_json("get", "connections")["connections"])


def test_parked_connection_expires_at_keepalive_timeout(lab):
    port = free_port()
    lab.vaned({"a.json": respond_rule(port)}, env={"VANE_SEC_KEEPALIVE_TIMEOUT_SECS": "0.5"})
    s = socket.create_connection(("127.0.0.1", port))
    request(s)
    s.settimeout(3)
    t0 = time.monotonic()
    assert s.recv(10) == b""  # closed by the server
    assert 0.3 < time.monotonic() - t0 < 2.5


def test_drain_closes_idle_keepalive_at_once(lab):
    port = free_port()
    d = lab.vaned({"a.json": respond_rule(port)}, env={"VANE_DRAIN_TIMEOUT_SECS": "20"})
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
    for s in socks:
        request(s)
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait(10) == 0
    assert time.monotonic() - t0 < 5  # idle connections do not hold the drain
    for s in socks:
        s.settimeout(2)
        assert s.recv(10) == b""
