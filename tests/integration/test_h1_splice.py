"""Proxied HTTP/1 bodies moved socket to socket by ``splice`` (``Body.splice_to``).

Real loopback sockets on both sides. Responses: a raw backend that answers canned bytes (some
of them hostile: short, stalled, with a second response smuggled behind the body), the
upstream codec reading from it, and a client socket the body is spliced to. Requests: the
server codec on a client connection (short, stalled, Expect, pipelined behind the body)
and an upstream socket the body is spliced to.
"""

import hashlib
import socket

import gevent
import pytest
from gevent.server import StreamServer

from tests.support.http_backend import pattern
from tests.support.tls import backend_tls_context
from vane.net.dial import adopt
from vane.net.h1.client import H1ClientConnection
from vane.net.h1.framing import StreamIO, write_body
from vane.net.h1.server import H1Limits, H1ServerConnection
from vane.net.http.errors import ClientDisconnected, HttpError, UpstreamProtocolError, UpstreamTimeout
from vane.net.http.message import Headers, Request
from vane.net.pipes import pipes
from vane.net.plain import PlainStream
from vane.net.upstream.readahead import read_ahead

MIB = 1 << 20
BIG = pattern(MIB)
SMUGGLED = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL"


def _answer(path: bytes) -> tuple[bytes, bool]:
    """The bytes to send for ``path`` and whether to close afterwards."""
    if path == b"/big":
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (MIB, BIG), False
    if path == b"/small":
        return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", False
    if path == b"/smuggle":
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b%b" % (MIB, BIG, SMUGGLED), False
    if path == b"/short":
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (MIB, BIG[:300_000]), True
    raise AssertionError(path)


class RawBackend:
    """Reads request heads and answers each from ``_answer``; ``/stall`` sends part of a body
    and then nothing."""

    def __init__(self) -> None:
        self.connections = 0
        self.server = StreamServer(("127.0.0.1", 0), self.handle)
        self.server.start()
        self.port = self.server.server_port

    def handle(self, sock: socket.socket, _addr) -> None:
        self.connections += 1
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                if path == b"/huge":        # more than any socket buffers hold
                    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (64 * MIB))
                    for _ in range(64):
                        sock.sendall(BIG)
                    continue
                if path == b"/stall":
                    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (MIB, BIG[:100_000]))
                    gevent.sleep(5)
                    return
                data, close = _answer(path)
                sock.sendall(data)
                if close:
                    return
        except OSError:
            pass
        finally:
            sock.close()

    def connect(self, **kwargs) -> H1ClientConnection:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        return H1ClientConnection(PlainStream(adopt(sock)), **kwargs)


@pytest.fixture
def backend():
    b = RawBackend()
    yield b
    b.server.stop(timeout=1)


class Client:
    """A client connection: ``out`` is the proxy's end (a StreamIO over a PlainStream), the
    test reads from ``sock``."""

    def __init__(self) -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        self.sock = socket.create_connection(listener.getsockname(), timeout=5)
        accepted, _ = listener.accept()
        listener.close()
        self.stream = PlainStream(adopt(accepted))
        self.out = StreamIO(self.stream)

    def read(self, n: int) -> bytes:
        got = bytearray()
        while len(got) < n:
            data = self.sock.recv(min(n - len(got), 1 << 20))
            if not data:
                break
            got += data
        return bytes(got)

    def close(self) -> None:
        self.sock.close()
        self.stream.close()


@pytest.fixture
def client():
    c = Client()
    yield c
    c.close()


def get(conn: H1ClientConnection, path: str):
    conn.send_request(Request("GET", path), Headers([(b"host", b"backend")]))
    return conn.read_response()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_content_length_body_is_spliced_whole_and_the_connection_is_reused(backend, client):
    conn = backend.connect()
    for _ in range(2):
        resp = get(conn, "/big")
        reader = gevent.spawn(client.read, 4 + MIB)
        sent = resp.body.splice_to(client.out, b"HEAD", 5.0)
        assert sent == 4 + MIB
        got = reader.get(timeout=10)
        assert got[:4] == b"HEAD" and digest(got[4:]) == digest(BIG)
        assert conn.reusable and resp.body.done
        assert conn.bytes_received > MIB
    # the parser starts afresh after the bytes it never saw: the next answer parses
    resp = get(conn, "/small")
    assert b"".join(resp.body) == b"hello"
    assert conn.reusable and backend.connections == 1


def test_write_body_splices_a_relayed_body_and_what_the_parser_already_holds(backend, client):
    conn = backend.connect()
    resp = get(conn, "/big")
    assert resp.body.pending        # the head's read brought part of the body along
    reader = gevent.spawn(client.read, 5 + MIB)
    free = len(pipes.free)
    sent = write_body(client.out, b"HEAD!", resp.body, False, 5.0)
    assert sent == 5 + MIB
    assert digest(reader.get(timeout=10)[5:]) == digest(BIG)
    assert conn.reusable
    assert len(pipes.free) >= max(free, 1)      # the pipe went back, empty


def test_behind_read_ahead_the_body_is_spliced_before_the_pump_starts(backend, client):
    conn = backend.connect()
    resp = get(conn, "/big")
    errors = []
    body = read_ahead(resp.body, 256 * 1024, lambda exc: errors.append(exc))
    reader = gevent.spawn(client.read, MIB)
    assert body.splice_to(client.out, b"", 5.0) == MIB
    assert digest(reader.get(timeout=10)) == digest(BIG)
    assert conn.reusable and not errors
    assert list(body) == []     # consumed: iterating gives nothing more


def test_a_second_response_smuggled_behind_the_body_ends_the_connection(backend, client):
    conn = backend.connect()
    resp = get(conn, "/smuggle")
    reader = gevent.spawn(client.read, MIB)
    assert resp.body.splice_to(client.out, b"", 5.0) == MIB
    got = reader.get(timeout=10)
    assert digest(got) == digest(BIG)   # exactly the announced length, nothing of what follows
    assert not conn.reusable            # the bytes behind it are never read as the next answer


def test_a_body_shorter_than_announced_fails_and_is_never_reused(backend, client):
    conn = backend.connect()
    resp = get(conn, "/short")
    errors = []
    body = read_ahead(resp.body, 0, lambda exc: errors.append(exc))
    with pytest.raises(UpstreamProtocolError, match="truncated"):
        body.splice_to(client.out, b"", 5.0)
    body.close()
    assert not conn.reusable
    assert len(errors) == 1             # reported once, as a relayed body's failure is
    assert client.read(300_000) == BIG[:300_000]  # what came went through


def test_a_stalled_backend_times_out_mid_body(backend, client):
    conn = backend.connect(idle_timeout=0.3)
    resp = get(conn, "/stall")
    with pytest.raises(UpstreamTimeout):
        resp.body.splice_to(client.out, b"", 5.0)
    resp.body.close()
    assert not conn.reusable


def test_a_client_that_stops_reading_times_out_and_the_connection_is_dropped(backend, client):
    conn = backend.connect()
    resp = get(conn, "/huge")
    with pytest.raises(TimeoutError):
        resp.body.splice_to(client.out, b"", 0.3)
    resp.body.close()
    assert not conn.reusable


def test_a_client_that_went_away_is_an_error_of_the_client_side(backend, client):
    conn = backend.connect()
    resp = get(conn, "/big")
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    client.sock.close()
    with pytest.raises(OSError) as info:
        resp.body.splice_to(client.out, b"", 5.0)
    assert not isinstance(info.value, TimeoutError)
    resp.body.close()
    assert not conn.reusable


def test_tls_on_either_side_takes_the_ordinary_path(backend, client, tmp_path):
    import trustme
    from gevent import ssl

    ca = trustme.CA()
    tls_backend = StreamServer(("127.0.0.1", 0), backend.handle, ssl_context=backend_tls_context(ca))
    tls_backend.start()
    try:
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        raw = socket.create_connection(("127.0.0.1", tls_backend.server_port), timeout=5)
        conn = H1ClientConnection(ctx.wrap_socket(raw, server_hostname="localhost"))
        resp = get(conn, "/big")
        assert resp.body.splice_to(client.out, b"HEAD", 5.0) is None    # nothing sent
        assert digest(b"".join(resp.body)) == digest(BIG)
        assert conn.reusable
    finally:
        tls_backend.stop(timeout=1)
    # a plain backend towards a stream that is not plain: not spliced either
    conn = backend.connect()
    resp = get(conn, "/big")
    tls_out = StreamIO(ctx.wrap_socket(socket.socket(), server_hostname="localhost", do_handshake_on_connect=False))
    assert resp.body.splice_to(tls_out, b"HEAD", 5.0) is None
    assert digest(b"".join(resp.body)) == digest(BIG)


# -- request bodies: client to upstream ------------------------------------------------------

class Front:
    """A client socket (``sock``) and the server codec on the proxy's end of it."""

    def __init__(self, **limits) -> None:
        self.pair = Client()
        self.sock = self.pair.sock
        self.codec = H1ServerConnection(self.pair.stream, H1Limits(**limits))

    def close(self) -> None:
        self.pair.close()


@pytest.fixture
def upstream():
    """The proxy's end of an upstream connection (``out``) and the backend's (``sock``)."""
    u = Client()
    yield u
    u.close()


POST = b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n"


def test_a_request_body_is_spliced_whole_and_the_next_request_is_parsed_afresh(upstream):
    front = Front()
    try:
        front.sock.sendall(POST % MIB + BIG[:1000])
        req = front.codec.next_request()
        front.sock.sendall(BIG[1000:] + b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        reader = gevent.spawn(upstream.read, 4 + MIB)
        assert write_body(upstream.out, b"HEAD", req.body, False, 5.0) == 4 + MIB
        assert digest(reader.get(timeout=10)[4:]) == digest(BIG)
        assert req.body.done and front.codec.keep_alive
        nxt = front.codec.next_request()
        assert (nxt.method, nxt.path) == ("GET", "/next")
        assert front.codec.bytes_in == len(POST % MIB) + MIB + len(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    finally:
        front.close()


def test_expect_100_continue_is_answered_before_the_body_is_spliced(upstream):
    front = Front()
    try:
        front.sock.sendall(b"POST /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
                           b"Content-Length: %d\r\n\r\n" % MIB)
        req = front.codec.next_request()
        sender = gevent.spawn(lambda: (front.sock.recv(64), front.sock.sendall(BIG))[0])
        reader = gevent.spawn(upstream.read, MIB)
        assert req.body.splice_to(upstream.out, b"", 5.0) == MIB
        assert sender.get(timeout=10) == b"HTTP/1.1 100 Continue\r\n\r\n"
        assert digest(reader.get(timeout=10)) == digest(BIG)
    finally:
        front.close()


def test_a_client_that_stops_mid_body_is_a_408_and_the_connection_ends(upstream):
    front = Front(body_idle_timeout=0.3)
    try:
        front.sock.sendall(POST % MIB + BIG[:100_000])
        req = front.codec.next_request()
        with pytest.raises(HttpError) as info:
            req.body.splice_to(upstream.out, b"", 5.0)
        assert info.value.status == 408
        assert not front.codec.keep_alive
    finally:
        front.close()


def test_a_client_that_closes_mid_body_is_a_disconnect_and_the_connection_ends(upstream):
    front = Front()
    try:
        front.sock.sendall(POST % MIB + BIG[:100_000])
        req = front.codec.next_request()
        front.sock.close()
        with pytest.raises(ClientDisconnected):
            req.body.splice_to(upstream.out, b"", 5.0)
        assert not front.codec.keep_alive
        assert front.codec.next_request() is None
    finally:
        front.close()


def test_an_upstream_that_stops_reading_times_out_and_the_client_connection_ends(upstream):
    front = Front()
    try:
        front.sock.sendall(POST % (64 * MIB))
        req = front.codec.next_request()
        feeder = gevent.spawn(lambda: [front.sock.sendall(BIG) for _ in range(64)])
        with pytest.raises(TimeoutError):
            req.body.splice_to(upstream.out, b"", 0.3)
        assert not front.codec.keep_alive
        feeder.kill()
    finally:
        front.close()


def test_an_upgrade_or_chunked_request_body_is_not_spliced(upstream):
    front = Front()
    try:
        front.sock.sendall(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"5\r\nhello\r\n0\r\n\r\n")
        req = front.codec.next_request()
        assert req.body.splice_to(upstream.out, b"HEAD", 5.0) is None
        assert b"".join(req.body) == b"hello"
        front.sock.sendall(b"POST /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
                           b"Content-Length: %d\r\n\r\n" % MIB + BIG)
        req = front.codec.next_request()
        assert req.body.splice_to(upstream.out, b"HEAD", 5.0) is None
        assert digest(b"".join(req.body)) == digest(BIG)
    finally:
        front.close()
