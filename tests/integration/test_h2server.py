"""HTTP/2 server codec against real clients (httpx, curl, raw h2) over TLS and h2c on loopback."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import time

import gevent
import gevent.subprocess
import h2.config
import h2.connection
import h2.errors
import h2.events
import httpx
import pytest
import trustme
from gevent.pool import Pool
from gevent.server import StreamServer

from tests.support.net import wait_until
from vane.net.h2.common import GoawayFilter, goaway_frame
from vane.net.h2.server import H2Limits, H2ServerConnection
from vane.net.http.message import Body, Headers, Request, Response
from vane.net.tls.server import ServerTLS

BLOB = os.urandom(20 * 1024 * 1024)
BLOB_SHA = hashlib.sha256(BLOB).hexdigest()


def app(req: Request) -> Response:
    """The test handler: routes by path."""
    if req.path == "/echo":
        data = req.body.read_all(1 << 20)
        headers = Headers([(b"x-method", req.method.encode()), (b"x-query", req.query.encode()),
                           (b"x-authority", req.authority.encode()), (b"x-scheme", req.scheme.encode()),
                           (b"x-version", req.version.encode())])
        return Response(200, headers, Body.from_bytes(data))
    if req.path == "/hash":
        digest = hashlib.sha256()
        size = 0
        for chunk in req.body:
            digest.update(chunk)
            size += len(chunk)
        trailer = dict(req.body.trailers or [])
        text = f"{size} {digest.hexdigest()} {trailer.get(b'x-sum', b'').decode()}"
        return Response(200, Headers([(b"content-type", b"text/plain")]), Body.from_bytes(text.encode()))
    if req.path == "/blob":
        def chunks():
            view = memoryview(BLOB)
            for off in range(0, len(BLOB), 65536):
                yield bytes(view[off:off + 65536])
        return Response(200, Headers(), Body(chunks(), len(BLOB)))
    if req.path == "/trailers":
        body = Body(iter([b"part1-", b"part2"]))
        body.trailers = [(b"x-checksum", b"c0ffee"), (b"connection", b"nope")]
        return Response(200, Headers([(b"te", b"trailers")]), body)
    if req.path == "/slow":
        gevent.sleep(float(req.query or "1"))
        return Response(200, Headers(), Body.from_bytes(b"slow done"))
    if req.path == "/hop":
        headers = Headers([(b"connection", b"x-private, keep-alive"), (b"x-private", b"1"),
                           (b"keep-alive", b"timeout=5"), (b"transfer-encoding", b"chunked"),
                           (b"x-public", b"yes")])
        return Response(200, headers, Body.from_bytes(b"ok"))
    if req.path == "/stream-echo":
        return Response(200, Headers(), Body(iter(req.body)))
    if req.path == "/break-midway":
        def failing():
            yield b"first part"
            raise RuntimeError("backend died")
        return Response(200, Headers(), Body(failing()))
    if req.path == "/boom":
        raise RuntimeError("handler bug")
    if req.path == "/ignore-body":
        return Response(200, Headers(), Body.from_bytes(b"ignored"))
    if req.path == "/slow-reader":
        gevent.sleep(0.5)
        size = sum(len(c) for c in req.body)
        return Response(200, Headers(), Body.from_bytes(str(size).encode()))
    return Response(404, Headers(), Body.from_bytes(b"nope"))


class H2TestServer:
    def __init__(self, tls: ServerTLS | None, limits: H2Limits = H2Limits(), handler=app) -> None:
        self.tls = tls
        self.limits = limits
        self.handler = handler
        self.connections: list[H2ServerConnection] = []
        self.streams: list = []
        self.finished: list[H2ServerConnection] = []
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()
        self.port = self.server.server_port

    def _handle(self, sock: socket.socket, addr) -> None:
        stream = self.tls.accept(sock) if self.tls else sock
        self.streams.append(stream)
        conn = H2ServerConnection(stream, self.handler, self.limits,
                                  scheme="https" if self.tls else "http")
        self.connections.append(conn)
        try:
            conn.serve()
        finally:
            self.finished.append(conn)
            stream.close()

    def stop(self) -> None:
        self.server.stop(timeout=1)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    ca = trustme.CA()
    root = tmp_path_factory.mktemp("h2pki")
    issued = ca.issue_cert("localhost", "127.0.0.1")
    cert, key, ca_file = root / "c.pem", root / "c.key", root / "ca.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    return {"cert": str(cert), "key": str(key), "ca": str(ca_file)}


@pytest.fixture
def tls_server(pki):
    server = H2TestServer(ServerTLS([(pki["cert"], pki["key"])]))
    yield server
    server.stop()


@pytest.fixture
def h2c_server():
    server = H2TestServer(None)
    yield server
    server.stop()


def client(pki) -> httpx.Client:
    return httpx.Client(http2=True, verify=ssl.create_default_context(cafile=pki["ca"]), timeout=30)


def test_get_over_tls(pki, tls_server):
    with client(pki) as c:
        r = c.get(f"https://localhost:{tls_server.port}/echo?a=1&b=2")
    assert r.status_code == 200 and r.http_version == "HTTP/2"
    assert r.headers["x-query"] == "a=1&b=2"
    assert r.headers["x-authority"] == f"localhost:{tls_server.port}"
    assert r.headers["x-scheme"] == "https" and r.headers["x-version"] == "2"
    assert r.headers["content-length"] == "0"


def test_50_concurrent_requests_one_connection(pki, tls_server):
    with client(pki) as c:
        base = f"https://localhost:{tls_server.port}"
        assert c.get(base + "/echo").status_code == 200

        def one(i: int) -> None:
            payload = f"request-{i}-".encode() * (i + 1)
            r = c.post(base + f"/echo?i={i}", content=payload)
            assert r.status_code == 200
            assert r.content == payload and r.headers["x-query"] == f"i={i}"

        pool = Pool(50)
        for g in [pool.spawn(one, i) for i in range(50)]:
            g.get(timeout=30)
    assert len(tls_server.connections) == 1
    assert tls_server.connections[0].requests == 51


def test_20mib_upload_hashed_by_handler(pki, tls_server):
    with client(pki) as c:
        r = c.post(f"https://localhost:{tls_server.port}/hash", content=BLOB)
    size, digest, _ = r.text.split(" ")
    assert int(size) == len(BLOB) and digest == BLOB_SHA
    conn = tls_server.connections[0]
    assert conn.bytes_in > len(BLOB)


def test_20mib_download_hashed_by_client(pki, tls_server):
    with client(pki) as c:
        with c.stream("GET", f"https://localhost:{tls_server.port}/blob") as r:
            assert r.headers["content-length"] == str(len(BLOB))
            digest = hashlib.sha256()
            for chunk in r.iter_bytes():
                digest.update(chunk)
    assert digest.hexdigest() == BLOB_SHA
    assert tls_server.connections[0].bytes_out > len(BLOB)


def test_hop_by_hop_headers_removed(pki, tls_server):
    with client(pki) as c:
        r = c.get(f"https://localhost:{tls_server.port}/hop")
    assert r.headers["x-public"] == "yes"
    for name in ("connection", "x-private", "keep-alive", "transfer-encoding"):
        assert name not in r.headers


def test_handler_exception_is_500_and_connection_survives(pki, tls_server):
    with client(pki) as c:
        base = f"https://localhost:{tls_server.port}"
        assert c.get(base + "/boom").status_code == 500
        assert c.get(base + "/echo").status_code == 200
    assert len(tls_server.connections) == 1


def test_head_has_no_body(pki, tls_server):
    with client(pki) as c:
        r = c.head(f"https://localhost:{tls_server.port}/echo")
    assert r.status_code == 200 and r.content == b""


def test_response_before_body_read_resets_rest(h2c_server):
    raw = RawClient(h2c_server.port)
    try:
        sid = raw.conn.get_next_available_stream_id()
        raw.conn.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"http"),
                                    (b":authority", b"localhost"), (b":path", b"/ignore-body")])
        for _ in range(4):  # more is to come, but the handler never reads
            raw.conn.send_data(sid, b"z" * 15000)
        raw.flush()
        raw.pump_until(lambda: raw.of(h2.events.StreamReset, sid))
        assert b"".join(e.data for e in raw.of(h2.events.DataReceived, sid)) == b"ignored"
        assert raw.of(h2.events.StreamEnded, sid)
        assert raw.of(h2.events.StreamReset, sid)[0].error_code == h2.errors.ErrorCodes.NO_ERROR
        sid2 = raw.request("/echo")  # the connection window was credited for the dropped bytes
        raw.pump_until(lambda: raw.of(h2.events.StreamEnded, sid2))
        assert raw.conn.outbound_flow_control_window >= 65535 - 60000
    finally:
        raw.close()


def test_slow_consumer_backpressures_client(pki):
    limits = H2Limits(stream_buffer=65536, connection_window=1 << 20)
    server = H2TestServer(ServerTLS([(pki["cert"], pki["key"])]), limits)
    try:
        with client(pki) as c:
            result = gevent.spawn(c.post, f"https://localhost:{server.port}/slow-reader",
                                  content=b"y" * (4 * 1024 * 1024))
            assert wait_until(lambda: server.connections)
            gevent.sleep(0.3)  # the handler has not read yet: only the stream window may arrive
            assert server.connections[0].bytes_in < 200_000
            r = result.get(timeout=30)
            assert r.text == str(4 * 1024 * 1024)
    finally:
        server.stop()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_h2c_prior_knowledge(h2c_server):
    out = subprocess.run(
        ["curl", "-sS", "--http2-prior-knowledge", "-D", "-", "--data-binary", "hello h2c",
         f"http://127.0.0.1:{h2c_server.port}/echo?via=curl"],
        capture_output=True, timeout=30)
    text = out.stdout.decode()
    assert out.returncode == 0, out.stderr
    assert text.startswith("HTTP/2 200")
    assert "x-scheme: http" in text and "x-query: via=curl" in text
    assert text.endswith("hello h2c")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_over_tls_alpn(pki, tls_server):
    out = subprocess.run(
        ["curl", "-sS", "--http2", "--cacert", pki["ca"], "-o", "/dev/null", "-w", "%{http_version}",
         f"https://localhost:{tls_server.port}/echo"], capture_output=True, timeout=30)
    assert out.stdout == b"2", out.stderr


class RawClient:
    """A minimal h2 client over a plain socket, for what httpx does not expose."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                         header_encoding=None))
        self.conn.initiate_connection()
        self.flush()
        self.filter = GoawayFilter()
        self.goaways: list[tuple[int, int]] = []
        self.events: list = []

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, path: str, end: bool = True) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"),
                                     (b":authority", b"localhost"), (b":path", path.encode())],
                               end_stream=end)
        self.flush()
        return sid

    def pump(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        passthrough, goaways = self.filter.feed(data)
        self.goaways.extend(goaways)
        for ev in self.conn.receive_data(passthrough):
            self.events.append(ev)
            if isinstance(ev, h2.events.DataReceived):
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        self.flush()
        return True

    def pump_until(self, predicate, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline
            if not self.pump():
                break

    def of(self, kind, sid=None) -> list:
        return [e for e in self.events if isinstance(e, kind) and (sid is None or e.stream_id == sid)]

    def close(self) -> None:
        self.sock.close()


def test_excess_streams_refused_not_fatal():
    server = H2TestServer(None, H2Limits(max_concurrent_streams=2))
    raw = RawClient(server.port)
    try:
        # Three streams before the client has read our SETTINGS: the third is refused.
        sids = [raw.request("/slow?0.3") for _ in range(3)]
        raw.pump_until(lambda: len(raw.of(h2.events.StreamEnded)) >= 2 and raw.of(h2.events.StreamReset))
        resets = raw.of(h2.events.StreamReset)
        assert [r.stream_id for r in resets] == [sids[2]]
        assert resets[0].error_code == h2.errors.ErrorCodes.REFUSED_STREAM
        assert raw.conn.remote_settings.max_concurrent_streams == 2
        sid = raw.request("/echo")  # the connection is still usable
        raw.pump_until(lambda: raw.of(h2.events.StreamEnded, sid))
    finally:
        raw.close()
        server.stop()


def test_client_reset_keeps_connection(h2c_server):
    raw = RawClient(h2c_server.port)
    try:
        sid = raw.request("/slow?0.3")
        raw.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        raw.flush()
        sid2 = raw.request("/echo")
        raw.pump_until(lambda: raw.of(h2.events.StreamEnded, sid2))
        gevent.sleep(0.5)  # the reset stream's handler finishes and must not break anything
        sid3 = raw.request("/echo")
        raw.pump_until(lambda: raw.of(h2.events.StreamEnded, sid3))
        assert not raw.of(h2.events.DataReceived, sid)
    finally:
        raw.close()


def test_trailers_reach_client(h2c_server):
    raw = RawClient(h2c_server.port)
    try:
        sid = raw.request("/trailers")
        raw.pump_until(lambda: raw.of(h2.events.StreamEnded, sid))
        data = b"".join(e.data for e in raw.of(h2.events.DataReceived, sid))
        assert data == b"part1-part2"
        trailers = raw.of(h2.events.TrailersReceived, sid)
        assert trailers and trailers[0].headers == [(b"x-checksum", b"c0ffee")]
        head = dict(raw.of(h2.events.ResponseReceived, sid)[0].headers)
        assert b"te" not in head and head[b":status"] == b"200"
    finally:
        raw.close()


def test_goaway_lets_inflight_stream_finish(h2c_server):
    raw = RawClient(h2c_server.port)
    try:
        sid = raw.request("/slow?0.5")
        assert wait_until(lambda: h2c_server.connections and h2c_server.connections[0].open_streams == 1)
        conn = h2c_server.connections[0]
        conn.goaway()
        raw.pump_until(lambda: raw.goaways)
        assert raw.goaways == [(sid, 0)]
        late = raw.request("/echo")  # opened after GOAWAY: refused
        raw.pump_until(lambda: raw.of(h2.events.StreamEnded, sid) and raw.of(h2.events.StreamReset, late))
        body = b"".join(e.data for e in raw.of(h2.events.DataReceived, sid))
        assert body == b"slow done"
        assert wait_until(lambda: conn in h2c_server.finished, timeout=5)
        assert raw.sock.recv(100) == b""  # then the server closed
    finally:
        raw.close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_goaway_with_curl_inflight(pki, tls_server):
    # httpx/httpcore fail every stream on GOAWAY (h2's state machine closes); nghttp2 does not.
    proc = gevent.subprocess.Popen(
        ["curl", "-sS", "--http2", "--cacert", pki["ca"], f"https://localhost:{tls_server.port}/slow?0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert wait_until(lambda: tls_server.connections and tls_server.connections[0].open_streams == 1)
    conn = tls_server.connections[0]
    conn.goaway()
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert out == b"slow done"
    assert wait_until(lambda: conn in tls_server.finished)


def test_idle_connection_closed():
    server = H2TestServer(None, H2Limits(idle_timeout=0.3, header_timeout=0.3, body_idle_timeout=0.3))
    raw = RawClient(server.port)
    try:
        sid = raw.request("/echo")
        raw.pump_until(lambda: raw.of(h2.events.StreamEnded, sid))
        started = time.monotonic()
        raw.pump_until(lambda: raw.goaways, timeout=5)
        assert time.monotonic() - started < 3
        raw.sock.settimeout(5)
        assert raw.sock.recv(100) == b""
    finally:
        raw.close()
        server.stop()


def test_silent_client_hits_header_timeout():
    server = H2TestServer(None, H2Limits(header_timeout=0.3, body_idle_timeout=5))
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    try:
        started = time.monotonic()
        while sock.recv(65536):
            pass
        assert time.monotonic() - started < 3
    finally:
        sock.close()
        server.stop()


def test_goaway_filter_splits_frames_across_reads():
    frames = goaway_frame(7, 0) + b"\x00\x00\x00\x04\x01\x00\x00\x00\x00" + goaway_frame(9, 2)
    stream = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frames
    for step in (1, 2, 5, 9, 17, len(stream)):
        f = GoawayFilter(24)
        kept = b""
        found = []
        for i in range(0, len(stream), step):
            out, g = f.feed(stream[i:i + step])
            kept += bytes(out)
            found += g
        assert found == [(7, 0), (9, 2)]
        assert kept == stream[:24] + b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"


def test_oversized_header_list_is_431_on_its_stream_only():
    server = H2TestServer(None, H2Limits(max_header_list_size=4096))
    raw = RawClient(server.port)
    try:
        sid = raw.conn.get_next_available_stream_id()
        raw.conn.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"),
                                    (b":authority", b"localhost"), (b":path", b"/echo"),
                                    (b"x-big", b"v" * 8000)], end_stream=True)
        raw.flush()
        raw.pump_until(lambda: raw.of(h2.events.StreamEnded, sid), timeout=5)
        assert dict(raw.of(h2.events.ResponseReceived, sid)[0].headers)[b":status"] == b"431"
        assert not raw.goaways
        again = raw.request("/echo")                # the same connection goes on
        raw.pump_until(lambda: raw.of(h2.events.StreamEnded, again))
        assert dict(raw.of(h2.events.ResponseReceived, again)[0].headers)[b":status"] == b"200"
    finally:
        raw.close()
        server.stop()
