"""HTTP/1 server codec: parsing, smuggling defences, limits and framing, over a socketpair."""

import socket
import time

import gevent
import pytest

from vane.net.h1.server import DRAIN_LIMIT, H1Limits, H1ServerConnection
from vane.net.http.errors import HttpError
from vane.net.http.message import Body, Headers, Response


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    yield a, b
    a.close()
    b.close()


def conn_for(pair, data: bytes, limits: H1Limits | None = None, eof: bool = False):
    server, client = pair
    if data:
        client.sendall(data)
    if eof:
        client.shutdown(socket.SHUT_WR)
    return H1ServerConnection(server, limits or H1Limits()), client


def read_until(sock, marker: bytes, limit: int = 1 << 20) -> bytes:
    data = b""
    while marker not in data and len(data) < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def read_all(sock) -> bytes:
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def status_of(exc_info) -> int:
    return exc_info.value.status


# ---------------------------------------------------------------- request heads


def test_simple_get_fields(pair):
    conn, _ = conn_for(pair, b"GET /a/b%20c?x=1&y=%41 HTTP/1.1\r\nHost: Example.com:8080\r\n"
                             b"X-Thing: v1\r\nx-thing: v2\r\n\r\n")
    req = conn.next_request()
    assert (req.method, req.path, req.query, req.version) == ("GET", "/a/b%20c", "x=1&y=%41", "1.1")
    assert req.authority == "example.com:8080"  # normalised: lower-case host
    assert req.host == "example.com"
    assert req.headers.get_all("x-thing") == ["v1", "v2"]
    assert req.headers.items_[0] == (b"host", b"example.com:8080")
    assert req.body.length == 0 and list(req.body) == []
    assert conn.keep_alive


def test_absolute_form_takes_authority_from_target(pair):
    conn, _ = conn_for(pair, b"GET http://Other.example:81/p?q=1 HTTP/1.1\r\nHost: h\r\n\r\n")
    req = conn.next_request()
    assert (req.authority, req.path, req.query) == ("other.example:81", "/p", "q=1")


def test_connect_and_options_star(pair):
    conn, _ = conn_for(pair, b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n")
    req = conn.next_request()
    assert req.path == "*"


def test_connect_authority_form(pair):
    conn, client = conn_for(pair, b"CONNECT db.example:5432 HTTP/1.1\r\nHost: db.example:5432\r\n\r\n"
                                  b"\x00\x01raw")
    req = conn.next_request()
    assert req.method == "CONNECT" and req.authority == "db.example:5432"
    conn.write_response(Response(200), req)
    stream, rest = conn.detach()
    assert rest == b"\x00\x01raw"
    assert b"200" in read_until(client, b"\r\n\r\n")


def test_http10_without_host_and_keepalive(pair):
    conn, client = conn_for(pair, b"GET / HTTP/1.0\r\n\r\n")
    req = conn.next_request()
    assert req.version == "1.0" and req.authority == ""
    conn.write_response(Response(200, body=Body.from_bytes(b"hi")), req)
    assert not conn.keep_alive
    pair[0].shutdown(socket.SHUT_WR)
    data = read_all(client)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"connection: close\r\n" in data and data.endswith(b"\r\n\r\nhi")


def test_http10_keepalive_is_echoed(pair):
    conn, client = conn_for(pair, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    req = conn.next_request()
    conn.write_response(Response(200, body=Body.from_bytes(b"hi")), req)
    assert conn.keep_alive
    assert b"connection: keep-alive\r\n" in read_until(client, b"hi")


SMUGGLING = {
    "cl_and_te": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_and_cl": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                 b"Content-Length: 3\r\n\r\n0\r\n\r\n",
    "double_cl_differing": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
                           b"Content-Length: 4\r\n\r\nabcd",
    "double_cl_same": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
                      b"Content-Length: 3\r\n\r\nabc",
    "cl_list": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\nabc",
    "cl_sign": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\nabc",
    "bad_chunk_size": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"zz\r\nabc\r\n0\r\n\r\n",
    "chunk_size_overflow": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"fffffffffffffffff1\r\nabc\r\n",
    "obs_fold": b"GET / HTTP/1.1\r\nHost: h\r\nX-A: one\r\n two\r\n\r\n",
    "bare_lf_everywhere": b"GET / HTTP/1.1\nHost: h\n\n",
    "bare_lf_header": b"GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n",
    "bare_lf_chunk": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\nabc\n0\n\n",
    "space_in_name": b"GET / HTTP/1.1\r\nHost: h\r\nX Y: z\r\n\r\n",
    "space_before_colon": b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n",
    "bad_token_char": b"GET / HTTP/1.1\r\nHost: h\r\nX(Y): z\r\n\r\n",
    "te_gzip": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    "te_gzip_chunked": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                       b"0\r\n\r\n",
    "te_twice": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_on_http10": b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "missing_host": b"GET / HTTP/1.1\r\nX: y\r\n\r\n",
    "two_hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "ctl_in_value": b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x01b\r\n\r\n",
    "lone_cr_in_value": b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n",
    "relative_target": b"GET foo HTTP/1.1\r\nHost: h\r\n\r\n",
    "star_not_options": b"GET * HTTP/1.1\r\nHost: h\r\n\r\n",
    "connect_with_path": b"CONNECT h/x HTTP/1.1\r\nHost: h\r\n\r\n",
    "absolute_userinfo": b"GET http://u@h/ HTTP/1.1\r\nHost: h\r\n\r\n",
    "leading_space_header": b"GET / HTTP/1.1\r\n Host: h\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(SMUGGLING))
def test_smuggling_vectors_are_400(pair, name):
    conn, _ = conn_for(pair, SMUGGLING[name], eof=True)
    with pytest.raises(HttpError) as info:
        req = conn.next_request()
        list(req.body)      # chunk-size errors surface while reading the body
    assert status_of(info) == 400, name
    assert not conn.keep_alive


def test_smuggled_request_after_error_never_parsed(pair):
    data = (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: h\r\n\r\n")
    conn, _ = conn_for(pair, data, eof=True)
    with pytest.raises(HttpError):
        conn.next_request()
    assert conn.next_request() is None


def test_http2_version_is_505(pair):
    conn, _ = conn_for(pair, b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", eof=True)
    with pytest.raises(HttpError) as info:
        conn.next_request()
    assert status_of(info) == 505


# ---------------------------------------------------------------- limits


def test_too_many_headers_431(pair):
    head = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(20))
    conn, _ = conn_for(pair, head + b"\r\n", H1Limits(max_header_count=10), eof=True)
    with pytest.raises(HttpError) as info:
        conn.next_request()
    assert status_of(info) == 431


def test_header_section_too_large_in_one_read_431(pair):
    head = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 3000 + b"\r\n\r\n"
    conn, _ = conn_for(pair, head, H1Limits(max_header_bytes=2048), eof=True)
    with pytest.raises(HttpError) as info:
        conn.next_request()
    assert status_of(info) == 431


def test_header_section_too_large_streamed_431(pair):
    server, client = pair
    conn = H1ServerConnection(server, H1Limits(max_header_bytes=65536))

    def trickle():
        try:
            client.sendall(b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: ")
            for _ in range(64):     # a single endless value, 4 MiB if let through
                client.sendall(b"a" * 65536)
                gevent.sleep(0)
        except OSError:
            pass

    g = gevent.spawn(trickle)
    with pytest.raises(HttpError) as info:
        conn.next_request()
    assert status_of(info) == 431
    g.kill()


def test_header_size_at_limit_passes(pair):
    head = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 1500 + b"\r\n\r\n"
    conn, _ = conn_for(pair, head, H1Limits(max_header_bytes=2048))
    assert conn.next_request().headers.get("x-big") == "a" * 1500


def test_slow_header_cut_with_408(pair):
    server, client = pair
    conn = H1ServerConnection(server, H1Limits(header_timeout=0.5))

    def slowloris():
        try:
            for byte in b"GET / HTTP/1.1\r\nHost: h\r\nX-Slow: " + b"a" * 100:
                client.sendall(bytes([byte]))
                gevent.sleep(0.05)
        except OSError:
            pass

    g = gevent.spawn(slowloris)
    start = time.monotonic()
    with pytest.raises(HttpError) as info:
        conn.next_request()
    assert status_of(info) == 408
    assert 0.4 < time.monotonic() - start < 1.5
    g.kill()


def test_idle_keepalive_timeout_returns_none(pair):
    conn, client = conn_for(pair, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
                            H1Limits(keepalive_timeout=0.2))
    req = conn.next_request()
    conn.write_response(Response(204), req)
    start = time.monotonic()
    assert conn.next_request() is None
    assert time.monotonic() - start < 1.0


def test_clean_eof_returns_none(pair):
    conn, _ = conn_for(pair, b"", eof=True)
    assert conn.next_request() is None


# ---------------------------------------------------------------- bodies and pipelining


def test_pipelined_requests_in_order_with_bodies(pair):
    data = (b"POST /1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
            b"POST /2 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
            b"GET /3 HTTP/1.1\r\nHost: h\r\n\r\n")
    conn, client = conn_for(pair, data)
    got = []
    for _ in range(3):
        req = conn.next_request()
        got.append((req.path, b"".join(req.body), req.body.length))
        conn.write_response(Response(200, body=Body.from_bytes(req.path.encode())), req)
    assert got == [("/1", b"hello", 5), ("/2", b"abcde", None), ("/3", b"", 0)]
    answers = read_until(client, b"/3")
    assert answers.index(b"/1") < answers.index(b"/2") < answers.index(b"/3")


def test_unread_body_is_drained_before_next_request(pair):
    data = (b"POST /1 HTTP/1.1\r\nHost: h\r\nContent-Length: 10000\r\n\r\n" + b"x" * 10000
            + b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
    conn, _ = conn_for(pair, data)
    req = conn.next_request()
    conn.write_response(Response(200), req)
    assert conn.keep_alive
    assert conn.next_request().path == "/2"


def test_large_unread_body_closes_instead_of_draining(pair):
    conn, client = conn_for(pair, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n"
                                  % (DRAIN_LIMIT * 4))
    req = conn.next_request()
    conn.write_response(Response(413), req)
    assert not conn.keep_alive
    assert b"connection: close" in read_until(client, b"\r\n\r\n")
    assert conn.next_request() is None


def test_chunked_body_with_trailers(pair):
    data = (b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"4;ext=1\r\nwiki\r\n5\r\npedia\r\n0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n")
    conn, _ = conn_for(pair, data)
    req = conn.next_request()
    assert req.body.length is None
    assert b"".join(req.body) == b"wikipedia"
    assert req.body.trailers == [(b"x-checksum", b"abc"), (b"x-other", b"1")]
    assert req.headers.get("x-checksum") is None


def test_body_streams_as_read(pair):
    server, client = pair
    conn = H1ServerConnection(server, H1Limits())
    client.sendall(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 8\r\n\r\nabcd")
    req = conn.next_request()
    it = iter(req.body)
    assert next(it) == b"abcd"
    gevent.spawn_later(0.05, client.sendall, b"efgh")
    assert next(it) == b"efgh"
    assert list(it) == []


def test_body_idle_timeout_408(pair):
    conn, _ = conn_for(pair, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc",
                       H1Limits(body_idle_timeout=0.2))
    req = conn.next_request()
    with pytest.raises(HttpError) as info:
        b"".join(req.body)
    assert status_of(info) == 408


def test_client_gone_mid_body(pair):
    conn, _ = conn_for(pair, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc",
                       eof=True)
    req = conn.next_request()
    with pytest.raises(HttpError):
        b"".join(req.body)


def test_chunk_framing_flood_is_bounded(pair):
    server, client = pair
    conn = H1ServerConnection(server, H1Limits(max_header_bytes=4096))
    client.sendall(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"1\r\na\r\n0\r\nX-T: ")

    def flood():
        try:
            for _ in range(64):
                client.sendall(b"b" * 65536)
                gevent.sleep(0)
        except OSError:
            pass

    g = gevent.spawn(flood)
    req = conn.next_request()
    with pytest.raises(HttpError) as info:
        b"".join(req.body)
    assert status_of(info) == 431
    g.kill()


def test_expect_continue_sent_when_body_read(pair):
    server, client = pair
    conn = H1ServerConnection(server, H1Limits())
    client.sendall(b"PUT /f HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    req = conn.next_request()

    def send_body_after_continue():
        assert read_until(client, b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        client.sendall(b"hello")

    g = gevent.spawn(send_body_after_continue)
    assert b"".join(req.body) == b"hello"
    g.get(timeout=2)
    conn.write_response(Response(201), req)
    assert conn.keep_alive
    assert read_until(client, b"\r\n\r\n").startswith(b"HTTP/1.1 201 Created\r\n")


def test_expect_continue_not_sent_when_answered_first(pair):
    server, client = pair
    conn = H1ServerConnection(server, H1Limits())
    client.sendall(b"PUT /f HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    req = conn.next_request()
    conn.write_response(Response(401, body=Body.from_bytes(b"no")), req)
    pair[0].shutdown(socket.SHUT_WR)
    data = read_all(client)
    assert data.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
    assert b"100 Continue" not in data
    assert b"connection: close" in data
    assert conn.next_request() is None


def test_upgrade_request_keeps_rest_for_detach(pair):
    conn, client = conn_for(pair, b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n"
                                  b"Upgrade: websocket\r\n\r\n\x81\x05hello")
    req = conn.next_request()
    assert req.headers.get("upgrade") == "websocket"
    conn.write_response(Response(101, Headers([(b"upgrade", b"websocket")])), req)
    head = read_until(client, b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"connection: upgrade\r\n" in head and b"upgrade: websocket\r\n" in head
    stream, rest = conn.detach()
    assert stream is pair[0] and rest == b"\x81\x05hello"


def test_declined_upgrade_goes_on_with_http1(pair):
    """Upgrade: h2c (or a refused WebSocket) answered without 101: the connection stays HTTP/1.1
    and a request pipelined behind the upgrade request is parsed by a fresh parser."""
    conn, client = conn_for(pair, b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                                  b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
                                  b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n")
    req = conn.next_request()
    assert req.path == "/a"
    conn.write_response(Response(200, body=Body.from_bytes(b"one")), req)
    head = read_until(client, b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"connection: close" not in head
    assert conn.keep_alive
    req = conn.next_request()
    assert req.path == "/b" and "upgrade" not in req.headers


def test_refused_upgrade_with_connection_close_closes(pair):
    conn, client = conn_for(pair, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, close\r\n"
                                  b"Upgrade: websocket\r\n\r\n")
    req = conn.next_request()
    conn.write_response(Response(400), req)
    assert b"connection: close" in read_until(client, b"\r\n\r\n")
    assert conn.next_request() is None


def test_refused_connect_closes(pair):
    conn, client = conn_for(pair, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    req = conn.next_request()
    conn.write_response(Response(405), req)
    assert b"connection: close" in read_until(client, b"\r\n\r\n")
    assert conn.next_request() is None


def test_upgrade_request_with_body_reads_body(pair):
    conn, _ = conn_for(pair, b"POST /x HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n"
                             b"Upgrade: h2c\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n")
    req = conn.next_request()
    assert "upgrade" not in req.headers
    assert b"".join(req.body) == b"hello"


# ---------------------------------------------------------------- responses


def answer(pair, request: bytes, resp: Response) -> tuple[H1ServerConnection, bytes]:
    conn, client = conn_for(pair, request)
    req = conn.next_request()
    conn.write_response(resp, req)
    conn.close_after()
    pair[0].shutdown(socket.SHUT_WR)
    return conn, read_all(client)


GET = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
HEAD = b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n"


def test_content_length_response_replaces_handler_framing(pair):
    resp = Response(200, Headers([(b"content-length", b"999"), (b"transfer-encoding", b"chunked"),
                                  (b"x-a", b"1")]), Body.from_bytes(b"hello"))
    _, data = answer(pair, GET, resp)
    head, body = data.split(b"\r\n\r\n", 1)
    assert body == b"hello"
    assert b"content-length: 5" in head and b"999" not in head and b"chunked" not in head
    assert b"\r\ndate: " in head


def test_unknown_length_is_chunked_for_http11(pair):
    _, data = answer(pair, GET, Response(200, body=Body([b"ab", b"", b"cde"])))
    head, body = data.split(b"\r\n\r\n", 1)
    assert b"transfer-encoding: chunked" in head
    assert body == b"2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"


def test_trailers_dropped(pair):
    body = Body([b"abc"])
    body.trailers = [(b"x-t", b"1")]
    _, data = answer(pair, GET, Response(200, body=body))
    assert data.endswith(b"3\r\nabc\r\n0\r\n\r\n")


def test_head_keeps_content_length_without_body(pair):
    resp = Response(200, Headers([(b"content-length", b"1234")]), Body.empty())
    _, data = answer(pair, HEAD, resp)
    assert b"content-length: 1234\r\n" in data and data.endswith(b"\r\n\r\n")


def test_head_with_local_body_sends_its_length_only(pair):
    _, data = answer(pair, HEAD, Response(200, body=Body.from_bytes(b"hello")))
    assert b"content-length: 5\r\n" in data and data.endswith(b"\r\n\r\n")


def test_204_has_no_length_and_no_body(pair):
    resp = Response(204, Headers([(b"content-length", b"0")]), Body.from_bytes(b"oops"))
    _, data = answer(pair, GET, resp)
    assert b"content-length" not in data and b"transfer-encoding" not in data
    assert data.endswith(b"\r\n\r\n")


def test_304_no_body(pair):
    resp = Response(304, Headers([(b"etag", b'"x"')]), Body([b"never"]))
    _, data = answer(pair, GET, resp)
    assert data.endswith(b"\r\n\r\n") and b'etag: "x"' in data
    assert b"never" not in data and b"transfer-encoding" not in data


def test_http10_unknown_length_is_close_delimited(pair):
    conn, data = answer(pair, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                        Response(200, body=Body([b"abc", b"def"])))
    head, body = data.split(b"\r\n\r\n", 1)
    assert body == b"abcdef"
    assert b"connection: close" in head and b"chunked" not in head
    assert not conn.keep_alive


def test_header_injection_dropped(pair):
    resp = Response(200, Headers([(b"x-ok", b"1"), (b"x-bad", b"a\r\nSet-Cookie: evil=1"),
                                  (b"x-lf", b"a\nb")]), Body.from_bytes(b""))
    _, data = answer(pair, GET, resp)
    assert b"x-ok: 1" in data and b"evil" not in data and b"x-lf" not in data


def test_connection_close_when_requested(pair):
    conn, client = conn_for(pair, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    req = conn.next_request()
    conn.write_response(Response(200, body=Body.from_bytes(b"x")), req)
    assert not conn.keep_alive
    assert b"connection: close" in read_until(client, b"\r\n\r\nx")


def test_write_error(pair):
    conn, client = conn_for(pair, b"")
    conn.write_error(431)
    data = read_until(client, b"Large\n")
    assert data.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"connection: close" in data
    assert not conn.keep_alive


def test_large_body_sent_separately_and_counted(pair):
    payload = b"z" * 300000
    conn, client = conn_for(pair, GET)
    req = conn.next_request()
    reader = gevent.spawn(read_all, client)
    sent = conn.write_response(Response(200, body=Body.from_bytes(payload)), req)
    pair[0].shutdown(socket.SHUT_WR)
    data = reader.get(timeout=5)
    assert data.endswith(b"\r\n\r\n" + payload)
    assert sent == len(data) == conn.bytes_out


# ---------------------------------------------------------------- timeouts on writes, other streams


def test_write_to_a_client_that_never_reads_times_out(pair):
    server, client = pair
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn = H1ServerConnection(server, H1Limits(send_timeout=0.3))
    client.sendall(GET)
    req = conn.next_request()
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        conn.write_response(Response(200, body=Body([b"x" * 65536] * 200)), req)
    assert time.monotonic() - start < 2
    assert not conn.keep_alive


class WrappedStream:
    """A stream that is not a plain gevent socket (as a TLS stream is)."""

    def __init__(self, sock):
        self.sock = sock

    def recv_into(self, buf):
        return self.sock.recv_into(buf)

    def recv(self, n):
        return self.sock.recv(n)

    def sendall(self, data):
        self.sock.sendall(data)

    def settimeout(self, timeout):
        self.sock.settimeout(timeout)

    def shutdown_write(self):
        self.sock.shutdown(socket.SHUT_WR)

    def close(self):
        self.sock.close()

    def fileno(self):
        return self.sock.fileno()


def test_generic_stream_request_response_and_timeout(pair):
    server, client = pair
    conn = H1ServerConnection(WrappedStream(server), H1Limits(header_timeout=0.3,
                                                              keepalive_timeout=0.3))
    client.sendall(b"POST /w HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc")
    req = conn.next_request()
    assert b"".join(req.body) == b"abc"
    conn.write_response(Response(200, body=Body.from_bytes(b"ok")), req)
    assert read_until(client, b"ok").endswith(b"\r\n\r\nok")
    client.sendall(b"GET / HTTP/1.1\r\nHo")
    with pytest.raises(HttpError) as info:
        conn.next_request()
    assert status_of(info) == 408


# -- opens_with: the h2c preface told from a request by the first bytes ------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def test_opens_with_preface_in_pieces_hands_the_bytes_on(pair):
    server, client = pair
    conn = H1ServerConnection(server, H1Limits(header_timeout=2))

    def trickle():
        for piece in (PREFACE[:1], PREFACE[1:9], PREFACE[9:] + b"\x00\x00\x00\x04"):
            client.sendall(piece)
            gevent.sleep(0.05)

    g = gevent.spawn(trickle)
    assert conn.opens_with(PREFACE)
    g.join()
    rest = conn.take_input()
    assert rest.startswith(PREFACE) and conn.bytes_in == 0
    assert conn.next_request() is None      # the bytes went to the other codec: no request here


def test_opens_with_a_request_leaves_it_to_next_request(pair):
    conn, _ = conn_for(pair, b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nok")
    assert not conn.opens_with(PREFACE)
    req = conn.next_request()
    assert (req.method, req.path, b"".join(req.body)) == ("POST", "/p", b"ok")
    assert conn.bytes_in == len(b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nok")


def test_opens_with_first_byte_then_silence_is_408_within_the_header_timeout(pair):
    conn, _ = conn_for(pair, b"G", H1Limits(header_timeout=0.3))
    start = time.monotonic()
    assert not conn.opens_with(PREFACE)
    with pytest.raises(HttpError) as info:
        conn.next_request()
    assert status_of(info) == 408 and time.monotonic() - start < 1.5


def test_opens_with_silent_client_gets_no_request(pair):
    server, _ = pair
    conn = H1ServerConnection(server, H1Limits(header_timeout=0.3))
    start = time.monotonic()
    assert not conn.opens_with(PREFACE)
    assert conn.next_request() is None and time.monotonic() - start < 1.5


def test_opens_with_partial_preface_then_eof(pair):
    conn, _ = conn_for(pair, PREFACE[:10], eof=True)
    assert not conn.opens_with(PREFACE)
    assert conn.next_request() is None
