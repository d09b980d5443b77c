"""Connections that only hold a slot of HTTP management: idle ones, slow heads. An authorised
client that sends its request at once always gets in; a head must be complete in time."""

from __future__ import annotations

import socket
import time

import gevent
import httpx
import pytest

from tests.support.mgmt import start_http
from tests.support.net import wait_until
from vane.mgmt.client import Client
from vane.mgmt.slots import PENDING

pytestmark = pytest.mark.timeout(30)

TOKEN = "0b8d6f4e2c1a3b5d7f9e8c6a4b2d0f1e"


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """True when the server closes ``sock`` (EOF or reset) within ``within`` seconds."""
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def test_idle_connections_cannot_lock_out_an_authorised_client(daemon):
    srv = start_http(daemon, token=TOKEN)
    idle = []
    try:
        for _ in range(200):  # more than the whole connection table
            idle.append(socket.create_connection(("127.0.0.1", srv.port), timeout=5))
        assert wait_until(lambda: srv.slots.count(PENDING) == srv.slots.max_pending, timeout=3)
        client = Client(http_url=f"http://127.0.0.1:{srv.port}", token=TOKEN, timeout=2)
        for _ in range(5):  # well before any idle connection's head timeout
            assert client.call("ping")["pong"]
        assert srv.slots.count(PENDING) <= srv.slots.max_pending
        assert srv.slots.evicted >= 200 - srv.slots.max_pending
        # the oldest idle connections were the ones closed
        assert closed_by_server(idle[0], within=1.0)
    finally:
        for s in idle:
            s.close()
        srv.stop()


def test_a_flood_of_partial_heads_does_not_lock_out_a_client(daemon):
    srv = start_http(daemon, token=TOKEN)
    slow = []
    try:
        for _ in range(100):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            s.sendall(b"POST /v1/shutdown HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the rest
            slow.append(s)
        assert Client(http_url=f"http://127.0.0.1:{srv.port}", token=TOKEN, timeout=2).call("ping")["pong"]
        assert not daemon.shutdown_called
    finally:
        for s in slow:
            s.close()
        srv.stop()


@pytest.mark.parametrize("trickle", [False, True])
def test_a_head_not_complete_within_the_head_timeout_is_closed(daemon, trickle):
    """A silent connection and one that trickles a byte every 100 ms are both closed once the
    head timeout has passed since accept (not at once, and not kept alive by the trickle)."""
    srv = start_http(daemon, token=TOKEN, head_timeout=0.6)
    try:
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        started = time.monotonic()
        if trickle:
            def drip():
                try:
                    for byte in b"POST /v1/ping HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 200:
                        s.send(bytes([byte]))
                        gevent.sleep(0.1)
                except OSError:
                    pass
            dripper = gevent.spawn(drip)
        assert closed_by_server(s, within=3.0)
        elapsed = time.monotonic() - started
        assert elapsed >= 0.5, elapsed  # not at once ...
        if trickle:
            dripper.kill()
        s.close()
        # ... and an authorised client still gets in
        assert Client(http_url=f"http://127.0.0.1:{srv.port}", token=TOKEN, timeout=2).call("ping")["pong"]
    finally:
        srv.stop()


def test_a_full_table_of_authorised_idle_connections_makes_room(daemon):
    """Authorised keep-alive connections waiting for their next request give way too."""
    srv = start_http(daemon, token=TOKEN, max_clients=8, max_pending=4)
    kept = []
    try:
        for _ in range(8):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            s.sendall(b"POST /v1/ping HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: 2\r\n\r\n{}")
            assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
            kept.append(s)
        assert len(srv.slots) == 8
        assert Client(http_url=f"http://127.0.0.1:{srv.port}", token=TOKEN, timeout=2).call("ping")["pong"]
        assert closed_by_server(kept[0], within=1.0)
    finally:
        for s in kept:
            s.close()
        srv.stop()


def test_streams_are_capped(daemon):
    srv = start_http(daemon, token=TOKEN, max_streams=2)
    url = f"http://127.0.0.1:{srv.port}"
    tail = (b"POST /v1/tail_log HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: 2\r\n\r\n{}")
    streams = []
    try:
        for _ in range(2):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            s.sendall(tail)
            streams.append(s)
        assert wait_until(lambda: daemon.log_hub.subscribers == 2)
        r = httpx.post(f"{url}/v1/tail_log", json={}, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
        assert r.status_code == 503 and r.json()["error"]["kind"] == "Unavailable"
        assert daemon.log_hub.subscribers == 2
        assert Client(http_url=url, token=TOKEN, timeout=2).call("ping")["pong"]
    finally:
        for s in streams:
            s.close()
        srv.stop()
