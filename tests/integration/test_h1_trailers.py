"""Response trailers reach an HTTP/1.1 client that asked for them (``TE: trailers``) on a
chunked answer, and nobody else; fields a trailer section may not carry stay out."""

from __future__ import annotations

import socket

import gevent
import httptools
import pytest

from tests.support.h2raw import RawH2
from tests.support.net import connect, free_port, read_for

CHUNKED = (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n"
           b"trailer: grpc-status\r\n\r\n"
           b"5\r\nhello\r\n6\r\n world\r\n0\r\ngrpc-status: 0\r\nx-checksum: c0ffee\r\n"
           b"host: evil.test\r\n\r\n")


def _trailer_backend(server, sock: socket.socket) -> None:
    sock.settimeout(5)
    data = b""
    try:
        while True:
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, data = data.partition(b"\r\n\r\n")
            server.received.append(head)
            if b"/streamed" in head:        # the answer's end comes later than its start
                cut = CHUNKED.index(b"6\r\n")
                sock.sendall(CHUNKED[:cut])
                gevent.sleep(0.3)
                sock.sendall(CHUNKED[cut:])
            else:
                sock.sendall(CHUNKED)
    except OSError:
        return


class _Answer:
    """httptools callbacks: the body and the trailer fields of one chunked response."""

    def __init__(self, data: bytes) -> None:
        self.body = b""
        self.headers: list = []
        self.trailers: list = []
        self.complete = False
        self._in_trailers = False
        httptools.HttpResponseParser(self).feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        (self.trailers if self._in_trailers else self.headers).append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._in_trailers = True

    def on_body(self, data: bytes) -> None:
        self.body += data

    def on_message_complete(self) -> None:
        self.complete = True


@pytest.fixture
def front(lab):
    origin = lab.tcp(_trailer_backend)
    port = free_port()
    d = lab.vaned({"r.json": {"rule": "site", "listen": [f"127.0.0.1:{port}"],
                              "flow": {"proxy": {"input": {"upstream": f"http://{origin.target}"}}}}})
    d.wait_listening(port)
    return port, origin, d


def _get(port: int, extra: bytes = b"", path: bytes = b"/t") -> _Answer:
    with connect(port, timeout=5) as sock:
        sock.sendall(b"GET " + path + b" HTTP/1.1\r\nhost: site.test\r\nconnection: close\r\n" + extra + b"\r\n")
        return _Answer(read_for(sock, 5))


@pytest.mark.parametrize("path", [b"/t", b"/streamed"])
@pytest.mark.parametrize("te", [b"te: trailers\r\n", b"TE: deflate;q=0.5, Trailers\r\n"])
def test_trailers_forwarded_when_asked(front, te, path):
    port, origin, d = front
    answer = _get(port, te, path)
    assert answer.complete and answer.body == b"hello world"
    assert answer.trailers == [(b"grpc-status", b"0"), (b"x-checksum", b"c0ffee")]
    head = origin.received[-1].lower()
    # hop-by-hop, so not forwarded as is: the backend learns only that trailers are taken
    assert b"\r\nte: trailers\r\n" in head and b"deflate" not in head and head.count(b"te:") == 1
    assert b"\r\nconnection: te" in head
    assert d.count(r"Traceback|ERROR") == 0, d.stderr


@pytest.mark.parametrize("path", [b"/t", b"/streamed"])
def test_no_trailers_without_te(front, path):
    port, origin, d = front
    answer = _get(port, path=path)
    assert answer.complete and answer.body == b"hello world" and answer.trailers == [], d.stderr


def test_h2_client_still_gets_them(front):
    port, origin, d = front
    client = RawH2(port)
    try:
        for path in (b"/t", b"/streamed"):
            answer = client.answer(client.get(path, extra=[(b"te", b"trailers")]))
            assert answer.get("body") == b"hello world"
            assert answer.get("trailers") == [(b"grpc-status", b"0"), (b"x-checksum", b"c0ffee")]
    finally:
        client.close()
