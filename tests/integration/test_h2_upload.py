"""HTTP/2 uploads through vaned: large bodies from clients that leave Nagle's algorithm on.

vaned advertises a receive window per stream and per connection as large as the memory it
may hold for them, and credits body bytes back as they leave its buffer, so a client streams
a large body without stopping at every window. The bodies are checked end to end (sha256 at
the backend).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time

import h2.errors
import h2.settings
import httpx
import pytest
from gevent.event import Event
from gevent.server import StreamServer

from tests.support.h2raw import RawH2
from tests.support.net import free_port, wait_until
from vane.net.h2.server import H2Limits, H2ServerConnection
from vane.net.http.message import Body, Headers, Request, Response

SIZE = 20 * 1024 * 1024


@pytest.fixture(scope="module")
def body() -> bytes:
    return os.urandom(SIZE)


@pytest.fixture
def front(lab, backend):
    port = free_port()
    d = lab.vaned({"r.json": {"rule": "site", "listen": [f"127.0.0.1:{port}"],
                              "flow": {"proxy": {"input": {"upstream": backend.url}}}}})
    d.wait_listening(port)
    return port, d


def test_httpx_h2_upload_of_20_mib_arrives_whole(front, body):
    port, d = front
    started = time.monotonic()
    with httpx.Client(http1=False, http2=True, timeout=60) as client:
        r = client.post(f"http://127.0.0.1:{port}/hash", content=body, headers={"host": "site.test"})
    took = time.monotonic() - started
    assert r.http_version == "HTTP/2" and r.status_code == 200
    assert r.json()["sha256"] == hashlib.sha256(body).hexdigest() and r.json()["length"] == SIZE
    print(f"httpx 20 MiB: {took:.2f}s")
    assert d.count(r"Traceback|ERROR") == 0, d.stderr


def test_raw_h2_upload_without_nodelay_arrives_whole(front, body):
    port, d = front
    client = RawH2(port)
    assert client.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
    try:
        started = time.monotonic()
        sid = client.upload([(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"site.test"),
                             (b":path", b"/hash"), (b"content-length", b"%d" % SIZE)], body)
        answer = client.answer(sid, 30)
        took = time.monotonic() - started
    finally:
        client.close()
    print(f"raw h2 20 MiB: {took:.2f}s, {client.window_waits} waits for window")
    # the defaults: 1 MiB per stream and 4 MiB per connection, open from the start
    assert client.conn.remote_settings[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] == 1 << 20
    assert answer.get("status") == 200, answer
    info = json.loads(answer["body"])
    assert info["sha256"] == hashlib.sha256(body).hexdigest() and info["length"] == SIZE


def test_vaned_advertises_the_configured_windows(lab, backend):
    port = free_port()
    d = lab.vaned({"r.json": {"rule": "site", "listen": [f"127.0.0.1:{port}"],
                              "flow": {"proxy": {"input": {"upstream": backend.url}}}}},
                  env={"VANE_SEC_H2_STREAM_WINDOW": "300000", "VANE_SEC_H2_CONNECTION_WINDOW": "900000"})
    d.wait_listening(port)
    client = RawH2(port)
    try:
        assert client.answer(client.get(b"/x")).get("status") == 200
        assert client.conn.remote_settings[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] == 300000
        assert client.conn.outbound_flow_control_window == 900000
        # DATA frames up to half the stream window: two in flight per window
        assert client.conn.remote_settings[h2.settings.SettingCodes.MAX_FRAME_SIZE] == 150000
    finally:
        client.close()


def test_a_large_frame_other_than_data_ends_the_connection_unread(front):
    port, d = front
    client = RawH2(port)
    try:
        assert client.answer(client.get(b"/x")).get("status") == 200
        # an extension frame as long as a DATA frame may be: refused on its header alone
        client.sock.sendall((100000).to_bytes(3, "big") + b"\x0a\x00\x00\x00\x00\x00" + b"e" * 1000)
        client.pump(lambda: client.goaway is not None, 5)
    finally:
        client.close()
    assert client.goaway is not None and client.goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert d.count(r"Traceback|ERROR") == 0, d.stderr


# -- a consumer that does not read: what the codec holds stays within the stream window --------

def _send_within_window(client: RawH2, sid: int, body: bytes, off: int) -> int:
    """Queue as much of ``body`` from ``off`` as the windows allow now; the new offset."""
    while off < len(body):
        room = min(client.conn.local_flow_control_window(sid), client.conn.max_outbound_frame_size,
                   len(body) - off)
        if room <= 0:
            break
        client.conn.send_data(sid, body[off:off + room], end_stream=off + room == len(body))
        off += room
    client.flush()
    return off


def test_a_stalled_consumer_holds_at_most_its_stream_window(body):
    limits = H2Limits()                 # the defaults: 1 MiB per stream, 4 MiB per connection
    release = Event()
    conns: list[H2ServerConnection] = []

    def handler(req: Request) -> Response:
        if req.path == "/hold":
            release.wait(30)
        size = 0
        digest = hashlib.sha256()
        for chunk in req.body:
            digest.update(chunk)
            size += len(chunk)
        return Response(200, Headers(), Body.from_bytes(f"{size} {digest.hexdigest()}".encode()))

    def serve(sock: socket.socket, addr: object) -> None:
        conn = H2ServerConnection(sock, handler, limits, scheme="http")
        conns.append(conn)
        conn.serve()

    server = StreamServer(("127.0.0.1", 0), serve)
    server.start()
    client = RawH2(server.server_port)
    held = body[:8 * 1024 * 1024]
    try:
        head = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"site.test")]
        sid = client.conn.get_next_available_stream_id()
        client.conn.send_headers(sid, head + [(b":path", b"/hold")])
        off = _send_within_window(client, sid, held, 0)
        client.pump(lambda: False, 0.5)             # any credit vaned gives arrives meanwhile
        off = _send_within_window(client, sid, held, off)
        client.pump(lambda: False, 0.5)
        assert off == limits.stream_buffer      # the whole window at once, and not a byte more
        assert wait_until(lambda: conns and conns[0].bytes_in >= off)
        assert conns[0].bytes_in <= limits.stream_buffer + 65536
        # the connection window is not the stalled stream's: another upload goes through
        other = client.upload(head + [(b":path", b"/hash")], body[:3 * 1024 * 1024])
        assert client.answer(other, 30).get("body") == \
            f"{3 * 1024 * 1024} {hashlib.sha256(body[:3 * 1024 * 1024]).hexdigest()}".encode()
        release.set()
        deadline = time.monotonic() + 30
        while off < len(held) and time.monotonic() < deadline:
            off = _send_within_window(client, sid, held, off)
            client.pump(lambda: client.conn.local_flow_control_window(sid) > 0, 1.0)
        assert client.answer(sid, 30).get("body") == f"{len(held)} {hashlib.sha256(held).hexdigest()}".encode()
    finally:
        release.set()
        client.close()
        server.stop(timeout=1)
