"""Clients that do not read cannot take a backend's connections away from everyone else.

Attackers on 127.0.0.3-5 open many requests and never read the answers (HTTP/1.1 slow
readers, HTTP/2 streams with a zero window); a victim on 127.0.0.2 keeps asking through the
same rule. The pool is small (8 connections) so the attack is cheap to mount. Small answers
are read ahead of the client and free their connection at once; large ones are held at most
``max_active_per_client`` per client IP; the victim gets every answer.
"""

from __future__ import annotations

import socket

import gevent
import pytest

from tests.support.h2raw import RawH2
from tests.support.http_backend import pattern
from tests.support.net import connect, free_port, parse_responses, read_for, wait_until

POOL = {"upstream_pool": {"max_active_per_host": 8, "response_buffer": 65536, "connect_timeout": 2}}
BIG = 8 * 1024 * 1024          # far more than the read-ahead buffer and the socket buffers
SMALL = 20000                  # fits the read-ahead buffer


@pytest.fixture
def front(lab, backend):
    port = free_port()
    (lab.conf / "config.json").write_text(__import__("json").dumps(POOL))
    d = lab.vaned({"r.json": {"rule": "site", "listen": [f"127.0.0.1:{port}"],
                              "flow": {"proxy": {"input": {"upstream": backend.url}}}}},
                  env={"VANE_SEC_SEND_TIMEOUT_SECS": "60"})   # readers that stall stay connected
    d.wait_listening(port)
    return port, backend, d


def slow_readers(port: int, source: str, n: int, size: int) -> list[socket.socket]:
    """``n`` connections from ``source`` that each ask for ``size`` bytes and read nothing."""
    socks = []
    for _ in range(n):
        sock = connect(port, source, timeout=5.0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(f"GET /data?n={size} HTTP/1.1\r\nHost: site.test\r\n\r\n".encode())
        socks.append(sock)
    return socks


def victim_gets(port: int, count: int = 10) -> list[int]:
    statuses = []
    for i in range(count):
        with connect(port, "127.0.0.2", timeout=10) as sock:
            sock.sendall(f"GET /data?n={SMALL}&i={i} HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n"
                         .encode())
            answers = parse_responses(read_for(sock, 10))
        statuses.append(answers[0][0] if answers else 0)
        if answers:
            assert answers[0][2] == pattern(SMALL)
    return statuses


def test_slow_readers_of_large_answers_from_three_addresses_leave_the_victim_served(front):
    port, backend, d = front
    attack = []
    for source in ("127.0.0.3", "127.0.0.4", "127.0.0.5"):
        attack += slow_readers(port, source, 30, BIG)
    try:
        wait_until(lambda: backend.requests >= 6, 5)   # every attacker holds its share by now
        gevent.sleep(0.5)
        assert victim_gets(port) == [200] * 10
        rows = d.cli_json("get", "upstreams")["upstreams"]
        assert rows and rows[0]["active"] <= 8
    finally:
        for sock in attack:
            sock.close()


def test_slow_readers_of_small_answers_hold_no_upstream_connection(front):
    port, backend, d = front
    attack = slow_readers(port, "127.0.0.3", 60, SMALL)
    try:
        wait_until(lambda: backend.requests >= 60, 10)
        rows = wait_until(lambda: [r for r in d.cli_json("get", "upstreams")["upstreams"] if r["active"] == 0], 5)
        assert rows, d.cli_json("get", "upstreams")            # all read ahead: nothing leased
        assert victim_gets(port, 5) == [200] * 5
    finally:
        for sock in attack:
            sock.close()


def test_http2_streams_with_a_closed_window_leave_the_victim_served(front):
    port, backend, d = front
    attackers = [RawH2(port, source, window=0) for source in ("127.0.0.3", "127.0.0.4", "127.0.0.5")]
    try:
        for client in attackers:
            for i in range(20):
                client.get(f"/data?n={BIG}&a={i}".encode())
        wait_until(lambda: backend.requests >= 6, 5)
        gevent.sleep(0.5)
        assert victim_gets(port) == [200] * 10
    finally:
        for client in attackers:
            client.close()


def test_one_client_past_its_share_gets_503_and_the_share_comes_back(front):
    port, backend, d = front
    attack = slow_readers(port, "127.0.0.3", 6, BIG)    # the share is 2 of the pool's 8
    try:
        wait_until(lambda: backend.requests >= 2, 5)
        with connect(port, "127.0.0.3", timeout=10) as sock:
            sock.sendall(b"GET /data?n=10 HTTP/1.1\r\nHost: site.test\r\n\r\n")
            answers = parse_responses(read_for(sock, 6))
        assert [a[0] for a in answers] == [503]
    finally:
        for sock in attack:
            sock.close()
    wait_until(lambda: all(r["active"] == 0 for r in d.cli_json("get", "upstreams")["upstreams"]), 10)
    with connect(port, "127.0.0.3", timeout=5.0) as sock:
        sock.sendall(b"GET /data?n=10 HTTP/1.1\r\nHost: site.test\r\n\r\n")
        assert [a[0] for a in parse_responses(read_for(sock, 2))] == [200]
