"""An upstream that answers before it has read the request body (an early 413 or 401) and
closes: the client gets that answer, not a 502, whether it uploads with curl or httpx."""

import os
import socket

import gevent
import httpx
import pytest
from gevent.server import StreamServer

from tests.support.config import write_config
from tests.support.daemon import Vaned
from tests.support.net import curl, free_port

pytestmark = pytest.mark.timeout(60)

ANSWER = b"HTTP/1.1 413 Too Big\r\ncontent-type: text/plain\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo big\n"


class EarlyBackend:
    """Reads the request head only, answers 413 at once and closes with the body unread."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def _handle(self, sock: socket.socket, _addr) -> None:
        sock.settimeout(10)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                data += chunk
            self.heads.append(data.split(b"\r\n\r\n", 1)[0])
            sock.sendall(ANSWER)
        finally:
            sock.close()    # unread body in the receive queue: the kernel sends an RST


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("early")
    backend = EarlyBackend()
    port = free_port()
    write_config(root, {"10-up.json": {"rule": "up", "listen": [f"127.0.0.1:{port}"],
                                       "flow": {"proxy": {"input": {"upstream": backend.url}}}}}, config={})
    vaned = Vaned(root).wait_accepting(port)
    yield backend, port, root
    vaned.stop()
    backend.server.stop(timeout=1)


def test_curl_upload_gets_the_early_413(env, tmp_path):
    backend, port, _ = env
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(1 << 20) * 8)
    out = curl("-sS", "--data-binary", f"@{big}", "-H", "Expect:", f"http://127.0.0.1:{port}/upload",
               "-w", "\n%{http_code}")
    assert out.stdout.endswith(b"too big\n\n413"), out.stdout[-200:]
    assert backend.heads and backend.heads[-1].startswith(b"POST /upload HTTP/1.1")


def test_streamed_httpx_upload_gets_the_early_413_and_vaned_keeps_serving(env):
    _, port, _ = env

    def chunks():
        for _ in range(64):
            yield b"x" * 65536
            gevent.sleep(0.005)

    with httpx.Client(timeout=10) as client:
        try:
            resp = client.post(f"http://127.0.0.1:{port}/stream", content=chunks())
            status = resp.status_code
        except httpx.TransportError:    # the client may also see its upload cut off
            status = None
        assert status in (413, None)
        assert client.post(f"http://127.0.0.1:{port}/small", content=b"hi").status_code == 413


def read_response(s: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += s.recv(65536)
    return head, body


def test_early_answer_then_the_connection_goes_on(env):
    """A body vaned can drain (under 256 KiB unread) keeps the client connection alive."""
    _, port, _ = env
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        body = b"y" * 200_000
        s.sendall(b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        head, answer = read_response(s)
        assert head.startswith(b"HTTP/1.1 413 ") and answer == b"too big\n"
        assert b"connection: close" not in head.lower()
        s.sendall(b"GET /again HTTP/1.1\r\nHost: a\r\n\r\n")
        head, answer = read_response(s)
        assert head.startswith(b"HTTP/1.1 413 ") and answer == b"too big\n"
