"""HTTP/2 client codec against our own HTTP/2 server over TLS (ALPN h2) on loopback."""

from __future__ import annotations

import hashlib
import socket

import gevent
import h2.settings
import pytest
import trustme
from gevent.pool import Pool

from tests.integration.test_h2server import BLOB, BLOB_SHA, H2TestServer, wait_until
from vane.net.h2.client import H2ClientConnection
from vane.net.h2.server import H2Limits
from vane.net.http.errors import UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout
from vane.net.http.message import Body, Headers, Request
from vane.net.tls.client import client_context, wrap
from vane.net.tls.server import ServerTLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    ca = trustme.CA()
    root = tmp_path_factory.mktemp("h2cpki")
    issued = ca.issue_cert("backend.test")
    cert, key, ca_file = root / "c.pem", root / "c.key", root / "ca.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    return {"cert": str(cert), "key": str(key), "ca": str(ca_file)}


@pytest.fixture
def backend(pki):
    server = H2TestServer(ServerTLS([(pki["cert"], pki["key"])], alpn=("h2",)))
    yield server
    server.stop()


@pytest.fixture
def h2c_backend():
    server = H2TestServer(None)
    yield server
    server.stop()


def connect(pki, port: int, **kwargs) -> H2ClientConnection:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    tls = wrap(sock, "backend.test", client_context(ca_file=pki["ca"], alpn=("h2",)), 5)
    assert tls.selected_alpn_protocol() == "h2"
    return H2ClientConnection(tls, **kwargs)


def get(path: str, method: str = "GET", body: Body | None = None) -> Request:
    path, _, query = path.partition("?")
    return Request(method, path, query, "2", Headers(), body, "https", "backend.test")


def test_simple_get(pki, backend):
    conn = connect(pki, backend.port)
    try:
        headers = Headers([(b"x-custom", b"1"), (b"connection", b"keep-alive"), (b"host", b"ignored")])
        resp = conn.request(get("/echo?q=1"), headers, timeout=5)
        assert resp.status == 200
        assert resp.headers.get("x-query") == "q=1"
        assert resp.headers.get("x-authority") == "backend.test"
        assert b"".join(resp.body) == b""
        assert conn.is_available() and conn.active_streams == 0
    finally:
        conn.close()


def test_20_concurrent_requests_one_connection(pki, backend):
    conn = connect(pki, backend.port)
    try:
        def one(i: int) -> None:
            payload = (b"%d-" % i) * (1000 * (i + 1))
            resp = conn.request(get(f"/echo?i={i}", "POST", Body.from_bytes(payload)), Headers(), timeout=10)
            assert resp.status == 200 and resp.headers.get("x-query") == f"i={i}"
            assert b"".join(resp.body) == payload

        pool = Pool(20)
        for g in [pool.spawn(one, i) for i in range(20)]:
            g.get(timeout=30)
        assert len(backend.connections) == 1 and backend.connections[0].requests == 20
        assert conn.active_streams == 0
    finally:
        conn.close()


def test_large_upload_with_trailers_hashed(pki, backend):
    conn = connect(pki, backend.port)
    try:
        def chunks():
            view = memoryview(BLOB)
            for off in range(0, len(BLOB), 100_000):
                yield bytes(view[off:off + 100_000])

        body = Body(chunks())
        body.trailers = [(b"x-sum", b"sent-by-client")]
        resp = conn.request(get("/hash", "POST", body), Headers(), timeout=30)
        size, digest, trailer = b"".join(resp.body).decode().split(" ")
        assert int(size) == len(BLOB) and digest == BLOB_SHA and trailer == "sent-by-client"
    finally:
        conn.close()


def test_large_download_hashed(pki, backend):
    conn = connect(pki, backend.port)
    try:
        resp = conn.request(get("/blob"), Headers(), timeout=10)
        assert resp.body.length == len(BLOB)
        digest = hashlib.sha256()
        for chunk in resp.body:
            digest.update(chunk)
        assert digest.hexdigest() == BLOB_SHA
        assert conn.bytes_in > len(BLOB)
    finally:
        conn.close()


def test_full_duplex_stream_echo(pki, backend):
    conn = connect(pki, backend.port)
    try:
        def chunks():
            view = memoryview(BLOB)
            for off in range(0, len(BLOB), 65536):
                yield bytes(view[off:off + 65536])

        resp = conn.request(get("/stream-echo", "POST", Body(chunks())), Headers(), timeout=30)
        digest = hashlib.sha256()
        for chunk in resp.body:
            digest.update(chunk)
        assert digest.hexdigest() == BLOB_SHA
    finally:
        conn.close()


def test_response_trailers_captured(pki, backend):
    conn = connect(pki, backend.port)
    try:
        resp = conn.request(get("/trailers"), Headers(), timeout=5)
        assert b"".join(resp.body) == b"part1-part2"
        assert resp.body.trailers == [(b"x-checksum", b"c0ffee")]
    finally:
        conn.close()


def test_response_header_timeout(pki, backend):
    conn = connect(pki, backend.port)
    try:
        with pytest.raises(UpstreamTimeout) as err:
            conn.request(get("/slow?2"), Headers(), timeout=0.2)
        assert err.value.request_sent and err.value.status == 504
        assert conn.active_streams == 0
        resp = conn.request(get("/echo"), Headers(), timeout=5)  # the connection survives
        assert resp.status == 200
    finally:
        conn.close()


def test_reset_midway_is_protocol_error(pki, backend):
    conn = connect(pki, backend.port)
    try:
        resp = conn.request(get("/break-midway"), Headers(), timeout=5)
        assert resp.status == 200
        with pytest.raises(UpstreamProtocolError) as err:
            for _ in resp.body:
                pass
        assert err.value.response_started
        assert conn.request(get("/echo"), Headers(), timeout=5).status == 200
    finally:
        conn.close()


def test_early_body_close_cancels_stream(pki, backend):
    conn = connect(pki, backend.port)
    try:
        resp = conn.request(get("/blob"), Headers(), timeout=5)
        first = next(iter(resp.body))
        assert first
        resp.body.close()
        assert conn.active_streams == 0
        wait_until(lambda: backend.connections[0].open_streams == 0)
        assert conn.request(get("/echo"), Headers(), timeout=5).status == 200
    finally:
        conn.close()


def test_refused_stream_is_retryable(pki):
    server = H2TestServer(ServerTLS([(pki["cert"], pki["key"])], alpn=("h2",)),
                          H2Limits(max_concurrent_streams=1))
    conn = connect(pki, server.port, max_streams=10)
    try:
        # Make the client believe the server allows more streams than it does (as a client
        # that has not yet seen the server's SETTINGS would): the server refuses the extra one.
        results: list = []

        def one(path: str) -> None:
            try:
                results.append(conn.request(get(path), Headers(), timeout=5).status)
            except UpstreamConnectError as exc:
                results.append(exc)

        slow = gevent.spawn(one, "/slow?0.3")
        wait_until(lambda: server.connections and server.connections[0].open_streams == 1)
        conn._h2.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = 10
        conn._h2.remote_settings.acknowledge()
        one("/echo")
        slow.get(timeout=5)
        refused = [r for r in results if isinstance(r, UpstreamConnectError)]
        assert refused and not refused[0].request_sent
        assert 200 in results
    finally:
        conn.close()
        server.stop()


def test_goaway_finishes_inflight_and_blocks_new(pki, backend):
    conn = connect(pki, backend.port)
    try:
        assert conn.request(get("/echo"), Headers(), timeout=5).status == 200
        pending = gevent.spawn(lambda: conn.request(get("/slow?0.4"), Headers(), timeout=5))
        server_conn = backend.connections[0]
        wait_until(lambda: server_conn.open_streams == 1)
        server_conn.goaway()
        resp = pending.get(timeout=5)
        assert resp.status == 200 and b"".join(resp.body) == b"slow done"
        wait_until(lambda: not conn.is_available())
        with pytest.raises(UpstreamConnectError):
            conn.request(get("/echo"), Headers(), timeout=5)
        wait_until(lambda: conn.closed)
    finally:
        conn.close()


def test_server_close_fails_inflight(pki):
    server = H2TestServer(ServerTLS([(pki["cert"], pki["key"])], alpn=("h2",)))
    conn = connect(pki, server.port)
    try:
        pending = gevent.spawn(lambda: conn.request(get("/slow?5"), Headers(), timeout=10))
        wait_until(lambda: server.connections and server.connections[0].open_streams == 1)
        server.server.stop(timeout=0)
        server.streams[0].close()  # the backend goes away mid-request
        with pytest.raises(UpstreamProtocolError):
            pending.get(timeout=5)
        wait_until(lambda: conn.closed)
        assert not conn.is_available()
    finally:
        conn.close()


def test_not_available_raises_connect_error(pki, backend):
    conn = connect(pki, backend.port)
    conn.close()
    with pytest.raises(UpstreamConnectError) as err:
        conn.request(get("/echo"), Headers(), timeout=1)
    assert not err.value.request_sent


def test_h2c_prior_knowledge_upstream(h2c_backend):
    sock = socket.create_connection(("127.0.0.1", h2c_backend.port), timeout=5)
    conn = H2ClientConnection(sock)
    try:
        req = Request("POST", "/echo", "", "2", Headers(), Body.from_bytes(b"plain"), "http", "127.0.0.1")
        resp = conn.request(req, Headers([(b"te", b"trailers")]), timeout=5)
        assert resp.status == 200 and resp.headers.get("x-scheme") == "http"
        assert b"".join(resp.body) == b"plain"
    finally:
        conn.close()
