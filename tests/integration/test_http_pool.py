"""The upstream pool and forwarding exchange against real loopback backends (no daemon)."""

import hashlib
import json

import gevent
import pytest
import trustme
from gevent.server import StreamServer

from tests.support.http_backend import Backend, pattern
from tests.support.net import free_port, wait_until
from tests.support.tls import backend_tls_context
from vane.config.settings import Settings
from vane.engine.trajectory import Trajectory
from vane.net.http.errors import UpstreamConnectError, UpstreamError, UpstreamTimeout
from vane.net.http.message import Body, Headers, Request
from vane.net.upstream.forward import exchange, upstream_headers
from vane.net.upstream.options import Options
from vane.net.upstream.pool import UpstreamPool


def make_ctx(path="/", method="GET", body=b"", headers=(), host="app.test"):
    hl = Headers([(b"host", host.encode())] + [(k.encode(), v.encode()) for k, v in headers])
    req = Request(method, path.partition("?")[0], path.partition("?")[2], "1.1", hl,
                  Body.from_bytes(body) if isinstance(body, bytes) else body, "http", host)
    conn = type("Conn", (), {"peer": ("127.0.0.1", 40000), "record": None})()
    return type("Ctx", (), {"request": req, "conn": conn, "trajectory": Trajectory(), "services": None})()


def fetch(pool, opts, path="/", **kw):
    ctx = make_ctx(path, **kw)
    resp, conn = exchange(pool, ctx.request, opts, upstream_headers(ctx.request, "127.0.0.1", opts), "127.0.0.1")
    data = b"".join(resp.body)
    return resp, data, conn


@pytest.fixture
def backend():
    """A backend named ``b`` (the answers below carry the name), in place of the shared one."""
    b = Backend("b")
    yield b
    b.stop()


@pytest.fixture
def pool():
    p = UpstreamPool()
    yield p
    p.close()


def test_keepalive_reuse_and_snapshot(backend, pool):
    opts = Options({"upstream": backend.url}, None)
    for i in range(20):
        resp, data, _ = fetch(pool, opts, f"/n{i}")
        assert resp.status == 200 and data == f"b /n{i}".encode()
    assert backend.connections == 1 and backend.requests == 20
    (row,) = pool.snapshot()
    assert row["upstream"] == f"http://127.0.0.1:{backend.port}"
    assert (row["idle"], row["active"], row["max_idle"], row["max_active"]) == (1, 0, 128, 256)
    assert row["reuses"] == 19 and row["protocol"] == "h1"


def test_large_bodies_stream_both_ways(backend, pool):
    opts = Options({"upstream": backend.url}, None)
    data = bytes(range(256)) * 40000
    chunks = (data[i:i + 100000] for i in range(0, len(data), 100000))
    resp, out, _ = fetch(pool, opts, "/hash", method="POST", body=Body(chunks, None))
    info = json.loads(out)
    assert info["sha256"] == hashlib.sha256(data).hexdigest() and info["chunked"] is True
    resp, out, _ = fetch(pool, opts, "/data?n=5000000&chunked=1")
    assert resp.body.length is None and len(out) == 5000000


def test_max_idle_bounds_what_is_kept(backend, pool):
    pool.configure({"max_idle_per_host": 3})
    opts = Options({"upstream": backend.url}, None)
    jobs = [gevent.spawn(fetch, pool, opts, "/sleep?s=0.2") for _ in range(8)]
    gevent.joinall(jobs, raise_error=True)
    assert backend.connections == 8
    assert pool.snapshot()[0]["idle"] == 3


def test_max_active_waiters_get_a_slot_or_time_out(backend, pool):
    pool.configure({"max_active_per_host": 2, "connect_timeout": 2})
    opts = Options({"upstream": backend.url}, None)
    jobs = [gevent.spawn(fetch, pool, opts, "/sleep?s=0.2") for _ in range(5)]
    gevent.joinall(jobs, raise_error=True)
    assert backend.connections == 2            # the waiters reused the two connections
    pool.configure({"max_active_per_host": 1, "connect_timeout": 0.2})
    slow = gevent.spawn(fetch, pool, opts, "/sleep?s=1")
    gevent.sleep(0.05)
    with pytest.raises(UpstreamTimeout, match="max_active_per_host"):
        fetch(pool, opts, "/")
    slow.get()


def test_idle_connections_are_reaped(backend, pool):
    pool.configure({"idle_timeout": 0.2})
    opts = Options({"upstream": backend.url}, None)
    fetch(pool, opts)
    assert pool.snapshot()[0]["idle"] == 1
    gevent.sleep(0.8)
    assert pool.snapshot() == [] or pool.snapshot()[0]["idle"] == 0


class ClosingBackend:
    """Answers one request per connection with keep-alive, then closes it silently."""

    def __init__(self):
        self.connections = 0
        self.server = StreamServer(("127.0.0.1", 0), self.handle)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def handle(self, sock, addr):
        self.connections += 1
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return
            data += chunk
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        gevent.sleep(0.05)
        sock.close()


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_stale_keepalive_connection_is_replaced(pool, method):
    srv = ClosingBackend()
    try:
        opts = Options({"upstream": srv.url}, None)
        assert fetch(pool, opts, method=method)[1] == b"ok"
        gevent.sleep(0.2)                     # the backend has closed the pooled connection
        assert fetch(pool, opts, method=method)[1] == b"ok"
        assert srv.connections == 2
    finally:
        srv.server.stop()


def test_connection_refused_is_a_connect_error(pool):
    opts = Options({"upstream": f"http://127.0.0.1:{free_port()}", "retries": 2}, None)
    with pytest.raises(UpstreamConnectError, match="refused"):
        fetch(pool, opts)


def test_a_missing_unix_path_is_a_connect_error_with_the_reason(tmp_path, pool):
    opts = Options({"upstream": f"unix:{tmp_path}/gone.sock"}, None)
    with pytest.raises(UpstreamConnectError, match="No such file or directory"):
        fetch(pool, opts)
    assert all(row["active"] == 0 for row in pool.snapshot())


def test_response_head_timeout(backend, pool):
    opts = Options({"upstream": backend.url, "timeout": 0.3}, None)
    with pytest.raises(UpstreamTimeout):
        fetch(pool, opts, "/sleep?s=2")
    assert pool.snapshot()[0]["active"] == 0


def test_upstream_by_name_is_resolved_once_per_connection_and_reused(backend, pool):
    opts = Options({"upstream": f"http://localhost:{backend.port}"}, None)
    for i in range(3):
        assert fetch(pool, opts, f"/n{i}")[1] == f"b /n{i}".encode()
    assert backend.connections == 1


def test_unix_socket_upstream(tmp_path, pool):
    path = str(tmp_path / "app.sock")
    b = Backend("unix", unix_path=path)
    try:
        opts = Options({"upstream": f"unix:{path}"}, None)
        assert fetch(pool, opts, "/x")[1] == b"unix /x"
        assert fetch(pool, opts, "/y")[1] == b"unix /y"
        assert b.connections == 1
    finally:
        b.stop()


def test_h2c_upstream_shares_one_connection(pool):
    b = Backend("h2", h2=True)
    try:
        opts = Options({"upstream": b.url, "version": "h2"}, None)
        jobs = [gevent.spawn(fetch, pool, opts, f"/sleep?s=0.2&i={i}") for i in range(20)]
        gevent.joinall(jobs, raise_error=True)
        assert all(j.value[1] == b"slept" for j in jobs)
        assert b.connections == 1
        row = pool.snapshot()[0]
        assert row["protocol"] == "h2" and row["h2_connections"] == 1
        resp, out, _ = fetch(pool, opts, "/hash", method="PUT", body=b"x" * 300000)
        assert json.loads(out)["length"] == 300000
    finally:
        b.stop()


def test_h2_upstream_stream_window_lets_a_download_run_ahead_of_a_slow_client():
    """An HTTP/2 upstream may send VANE_SEC_H2_STREAM_WINDOW (1 MiB) of an answer before the
    client reads any of it, not the protocol's default 64 KiB, and no more than that."""
    b = Backend("h2", h2=True)
    pool = UpstreamPool(Settings.from_env({}))
    try:
        opts = Options({"upstream": b.url, "version": "h2"}, None)
        ctx = make_ctx("/data?n=8388608&stream=1")
        resp, _conn = exchange(pool, ctx.request, opts, upstream_headers(ctx.request, "127.0.0.1", opts), "127.0.0.1")
        assert resp.status == 200
        wait_until(lambda: b.streamed >= 1 << 20, timeout=5)
        gevent.sleep(0.3)                       # nothing is read: the backend must stop
        assert (1 << 20) <= b.streamed <= (1 << 20) + 4 * 65536, b.streamed
        data = b"".join(resp.body)
        assert len(data) == 8388608 and data == pattern(8388608)
    finally:
        pool.close()
        b.stop()


@pytest.mark.parametrize("h2", [False, True], ids=["h1", "h2"])
@pytest.mark.parametrize("te, sent", [("trailers", "trailers"), ("trailers, deflate;q=0.5", "trailers"),
                                      ("gzip", None), (None, None)])
def test_te_trailers_reaches_the_backend_and_nothing_else_of_te(pool, h2, te, sent):
    """``TE`` is hop-by-hop, but a client that takes trailers (gRPC requires it) says so to the
    backend too: ``te: trailers`` alone, with ``Connection: te`` over HTTP/1.1 (RFC 9110
    §10.1.4); any other TE stays behind."""
    b = Backend("te", h2=h2)
    try:
        opts = Options({"upstream": b.url, **({"version": "h2"} if h2 else {})}, None)
        headers = [("te", te)] if te else []
        resp, out, _ = fetch(pool, opts, "/headers", headers=headers)
        assert resp.status == 200
        seen = json.loads(out)["headers"]
        assert [v for k, v in seen if k == "te"] == ([sent] if sent else [])
        connection = [v for k, v in seen if k == "connection"]
        assert connection == (["te"] if sent and not h2 else [])
    finally:
        b.stop()


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def test_https_verification_sni_and_alpn(ca, tmp_path, pool):
    seen_sni = []
    ctx = backend_tls_context(ca, ("127.0.0.1", "backend.test"))
    ctx.sni_callback = lambda sock, name, c: seen_sni.append(name)
    b = Backend("tls", tls=ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    try:
        ok = Options({"upstream": b.url, "ca_file": str(ca_file), "sni": "backend.test"}, None)
        resp, out, _ = fetch(pool, ok, "/x")
        assert out == b"tls /x" and seen_sni[-1] == "backend.test"
        assert pool.snapshot()[0]["protocol"] == "h1"          # ALPN: the backend chose http/1.1
        with pytest.raises(UpstreamConnectError, match="certificate"):
            fetch(pool, Options({"upstream": b.url}, None), "/x")
        assert fetch(pool, Options({"upstream": b.url, "verify": False}, None), "/y")[1] == b"tls /y"
    finally:
        b.stop()


def test_https_alpn_picks_h2(ca, tmp_path, pool):
    b = Backend("tls-h2", tls=backend_tls_context(ca, alpn=("h2", "http/1.1")), h2=True)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    try:
        opts = Options({"upstream": b.url, "ca_file": str(ca_file)}, None)
        jobs = [gevent.spawn(fetch, pool, opts, f"/p{i}") for i in range(10)]
        gevent.joinall(jobs, raise_error=True)
        assert pool.snapshot()[0]["protocol"] == "h2" and b.connections == 1
    finally:
        b.stop()


@pytest.mark.parametrize("method,retries,calls,ok", [
    ("GET", 1, 2, True), ("PUT", 1, 2, True), ("POST", 1, 1, False), ("PATCH", 3, 1, False), ("GET", 0, 1, False),
])
def test_connect_failures_are_retried_only_for_idempotent_methods(backend, pool, method, retries, calls, ok):
    real = pool._connect
    seen = []

    def flaky(ep, timeout):
        seen.append(ep)
        if len(seen) == 1:
            raise UpstreamConnectError("connect failed: refused (simulated)")
        return real(ep, timeout)

    pool._connect = flaky
    opts = Options({"upstream": backend.url, "retries": retries}, None)
    if ok:
        assert fetch(pool, opts, "/x", method=method)[1] == b"b /x"
    else:
        with pytest.raises(UpstreamConnectError):
            fetch(pool, opts, "/x", method=method)
    assert len(seen) == calls
    assert pool.snapshot()[0]["active"] == 0


def test_streamed_request_body_is_never_replayed(pool):
    srv = ClosingBackend()
    try:
        opts = Options({"upstream": srv.url}, None)
        assert fetch(pool, opts)[1] == b"ok"
        gevent.sleep(0.2)                     # the pooled connection is now stale
        body = Body(iter([b"x" * 10]), 10)    # a one-shot streamed body
        try:
            resp, data, _ = fetch(pool, opts, "/", method="PUT", body=body)
            assert data == b"ok"              # the staleness probe caught it first
        except UpstreamError as exc:
            assert exc.request_sent           # or it failed after writing: no replay
    finally:
        srv.server.stop()
