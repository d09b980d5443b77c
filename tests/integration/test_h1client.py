"""H1ClientConnection against a real scripted backend on loopback."""

import socket

import gevent
import httptools
import pytest
from gevent.server import StreamServer

from vane.net.h1.client import H1ClientConnection
from vane.net.http.errors import UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout
from vane.net.http.message import Body, Headers, Request

CANNED = {
    "/cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
    "/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
    "/close": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
    "/head": b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
    "/head-nolen": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n",
    "/interim": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "/101": b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
            b"\x81\x02hi",
    "/204": b"HTTP/1.1 204 No Content\r\n\r\n",
    "/trailing": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokJUNK",
    "/malformed": b"HTTP/1.1 abc\r\n\r\n",
    "/truncated": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
    "/te-gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxxxx",
}
CLOSE_AFTER = {"/close", "/truncated", "/te-gzip"}


class _Req:
    def __init__(self):
        self.url = b""
        self.headers = []
        self.body = b""
        self.done = False

    def on_url(self, url):
        self.url += url

    def on_header(self, name, value):
        self.headers.append((name.lower(), value))

    def on_body(self, data):
        self.body += data

    def on_message_complete(self):
        self.done = True


class Backend:
    """Answers canned responses by path; /echo returns the request framing and body."""

    def __init__(self):
        self.connections = 0
        self.server = StreamServer(("127.0.0.1", 0), self.handle)
        self.server.start()
        self.port = self.server.server_port

    def handle(self, sock, addr):
        self.connections += 1
        conn_id = self.connections
        try:
            while True:
                req = _Req()
                parser = httptools.HttpRequestParser(req)
                while not req.done:
                    data = sock.recv(65536)
                    if not data:
                        return
                    try:
                        parser.feed_data(data)
                    except httptools.HttpParserUpgrade:
                        req.done = True         # an upgrade request: its head is all there is
                path = req.url.decode()
                if path == "/slow":
                    gevent.sleep(2)
                    path = "/cl"
                if path == "/stall":
                    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
                    gevent.sleep(3)
                    return
                if path == "/echo":
                    framing = dict(req.headers)
                    desc = b"cl=%s te=%s expect=%s conn=%d " % (
                        framing.get(b"content-length", b"-"),
                        framing.get(b"transfer-encoding", b"-"),
                        framing.get(b"expect", b"-"), conn_id)
                    payload = desc + req.body
                    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(payload), payload))
                    continue
                sock.sendall(CANNED[path])
                if path in CLOSE_AFTER or path == "/101":
                    return
        except OSError:
            pass
        finally:
            sock.close()

    def connect(self, **kwargs) -> H1ClientConnection:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        return H1ClientConnection(sock, **kwargs)


@pytest.fixture(scope="module")
def backend():
    b = Backend()
    yield b
    b.server.stop(timeout=1)


def get(conn: H1ClientConnection, path: str, method: str = "GET", body: Body | None = None,
        headers: list | None = None, upgrade: bytes | None = None):
    req = Request(method, path, body=body)
    conn.send_request(req, Headers([(b"host", b"backend")] + (headers or [])), upgrade=upgrade)
    return conn.read_response(head_only_method=method == "HEAD")


def test_content_length_response(backend):
    conn = backend.connect()
    resp = get(conn, "/cl")
    assert resp.status == 200 and resp.body.length == 5
    assert resp.headers.get("x-a") == "1"
    assert not conn.reusable            # body not read yet
    assert b"".join(resp.body) == b"hello"
    assert conn.reusable


def test_chunked_response_with_trailers(backend):
    conn = backend.connect()
    resp = get(conn, "/chunked")
    assert resp.body.length is None
    assert b"".join(resp.body) == b"hello world"
    assert resp.body.trailers == [(b"x-trailer", b"t")]
    assert conn.reusable


def test_close_delimited_response(backend):
    conn = backend.connect()
    resp = get(conn, "/close")
    assert resp.body.length is None
    assert b"".join(resp.body) == b"until the end"
    assert not conn.reusable


def test_head_response_has_no_body_and_connection_is_reused(backend):
    conn = backend.connect()
    resp = get(conn, "/head", "HEAD")
    assert resp.headers.get("content-length") == "1234"
    assert list(resp.body) == []
    assert conn.reusable
    resp = get(conn, "/head-nolen", "HEAD")
    assert list(resp.body) == [] and conn.reusable
    resp = get(conn, "/cl")
    assert b"".join(resp.body) == b"hello"


def test_keepalive_reuses_same_socket(backend):
    conn = backend.connect()
    sock = conn.stream
    done = []
    conn.on_done(done.append)
    r1 = get(conn, "/echo", "POST", Body.from_bytes(b"one"))
    body1 = b"".join(r1.body)
    assert done == [conn] and conn.reusable
    r2 = get(conn, "/echo", "POST", Body.from_bytes(b"two"))
    body2 = b"".join(r2.body)
    assert conn.stream is sock
    id1 = body1.split(b"conn=")[1].split()[0]
    id2 = body2.split(b"conn=")[1].split()[0]
    assert id1 == id2
    assert body1.endswith(b"one") and body2.endswith(b"two")


def test_request_framing(backend):
    conn = backend.connect()
    r = get(conn, "/echo", "POST", Body.from_bytes(b"abc"))
    assert b"".join(r.body) .startswith(b"cl=3 te=- ")
    r = get(conn, "/echo", "POST", Body([b"ab", b"cd"]))
    assert b"".join(r.body).startswith(b"cl=- te=chunked ") and conn.reusable
    r = get(conn, "/echo", "POST", Body.empty())
    assert b"".join(r.body).startswith(b"cl=0 te=- ")
    r = get(conn, "/echo", "GET", headers=[(b"expect", b"100-continue"),
                                           (b"content-length", b"99")])
    assert b"".join(r.body).startswith(b"cl=- te=- expect=- ")
    assert conn.bytes_sent > 0


def test_interim_responses_skipped(backend):
    conn = backend.connect()
    resp = get(conn, "/interim")
    assert resp.status == 200 and b"".join(resp.body) == b"ok"
    assert conn.reusable


def test_101_returned_with_rest_for_detach(backend):
    conn = backend.connect()
    resp = get(conn, "/101", upgrade=b"websocket")
    assert resp.status == 101 and resp.headers.get("upgrade") == "websocket"
    stream, rest = conn.detach()
    assert rest == b"\x81\x02hi" or rest == b""
    if not rest:
        rest = stream.recv(10)
    assert rest.startswith(b"\x81")
    assert not conn.reusable


def test_101_is_refused_unless_it_switches_to_the_protocol_asked_for(backend):
    conn = backend.connect()
    with pytest.raises(UpstreamProtocolError, match="asked for no upgrade"):
        get(conn, "/101")                               # a plain request: no 101 may answer it
    assert not conn.reusable
    conn = backend.connect()
    with pytest.raises(UpstreamProtocolError, match="not the 'h2c'"):
        get(conn, "/101", upgrade=b"h2c")               # it switched to websocket instead
    assert not conn.reusable


def test_upgrade_request_is_framed_by_the_codec(backend):
    conn = backend.connect()
    with pytest.raises(ValueError, match="no body"):
        get(conn, "/101", "GET", Body.from_bytes(b"x" * 10), upgrade=b"websocket")


def test_204_and_close_early_not_reusable(backend):
    conn = backend.connect()
    resp = get(conn, "/204")
    resp.body.close()
    assert conn.reusable
    resp = get(conn, "/stall")
    resp.body.close()                   # consumer stops early
    assert not conn.reusable


def test_trailing_junk_makes_connection_not_reusable(backend):
    conn = backend.connect()
    resp = get(conn, "/trailing")
    assert b"".join(resp.body) == b"ok"
    assert not conn.reusable


def test_response_timeout(backend):
    conn = backend.connect(response_timeout=0.3)
    req = Request("GET", "/slow")
    conn.send_request(req, Headers([(b"host", b"b")]))
    with pytest.raises(UpstreamTimeout) as info:
        conn.read_response()
    assert info.value.request_sent and not info.value.response_started
    assert not conn.reusable


def test_body_idle_timeout(backend):
    conn = backend.connect(idle_timeout=0.3)
    resp = get(conn, "/stall")
    with pytest.raises(UpstreamTimeout) as info:
        b"".join(resp.body)
    assert info.value.response_started


def test_malformed_and_truncated(backend):
    conn = backend.connect()
    with pytest.raises(UpstreamProtocolError):
        get(conn, "/malformed")
    conn = backend.connect()
    resp = get(conn, "/truncated")
    with pytest.raises(UpstreamProtocolError):
        b"".join(resp.body)
    conn = backend.connect()
    with pytest.raises(UpstreamProtocolError):
        get(conn, "/te-gzip")


def test_closed_idle_connection_reports_nothing_received(backend):
    conn = backend.connect()
    b"".join(get(conn, "/close").body)
    gevent.sleep(0.05)
    req = Request("GET", "/cl")
    try:
        conn.send_request(req, Headers([(b"host", b"b")]))
    except UpstreamConnectError as exc:
        assert not exc.response_started
        return
    with pytest.raises((UpstreamProtocolError, UpstreamConnectError)) as info:
        conn.read_response()
    assert not info.value.response_started


def test_connect_refused_is_not_ours_but_send_to_dead_socket_is():
    a, b = socket.socketpair()
    b.close()
    conn = H1ClientConnection(a)
    with pytest.raises(UpstreamConnectError) as info:
        conn.send_request(Request("POST", "/", body=Body.from_bytes(b"x" * 10)),
                          Headers([(b"host", b"h")]))
    assert not info.value.request_sent
