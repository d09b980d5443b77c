"""H1ServerConnection behind a real gevent StreamServer, driven by curl and httpx."""

import hashlib
import os
import socket
import subprocess
import time

import gevent
import httpx
import pytest
from gevent.server import StreamServer

from tests.support import net
from vane.net.h1.server import H1Limits, H1ServerConnection
from vane.net.http.errors import HttpError
from vane.net.http.message import Body, Headers, Response

LIMITS = H1Limits(header_timeout=1.0, keepalive_timeout=5.0, body_idle_timeout=5.0)


def respond(req, client_port: int) -> Response:
    path = req.path
    if path == "/hash":
        digest = hashlib.sha256()
        size = 0
        for chunk in req.body:
            digest.update(chunk)
            size += len(chunk)
        text = f"{size} {digest.hexdigest()} {req.body.length} {req.headers.get('expect')}"
        return Response(200, Headers([(b"content-type", b"text/plain")]),
                        Body.from_bytes(text.encode()))
    if path == "/port":
        return Response(200, body=Body.from_bytes(str(client_port).encode()))
    if path == "/stream":
        return Response(200, body=Body(b"part%d;" % i for i in range(5)))
    if path == "/204":
        return Response(204)
    if path == "/304":
        return Response(304, Headers([(b"etag", b'"v1"')]))
    return Response(200, Headers([(b"x-path", req.uri.encode())]), Body.from_bytes(b"hello\n"))


def handle(sock, addr) -> None:
    conn = H1ServerConnection(sock, LIMITS)
    try:
        while True:
            try:
                req = conn.next_request()
            except HttpError as exc:
                conn.write_error(exc.status)
                return
            if req is None:
                return
            conn.write_response(respond(req, addr[1]), req)
    except OSError:
        pass
    finally:
        sock.close()


@pytest.fixture(scope="module")
def server():
    srv = StreamServer(("127.0.0.1", 0), handle)
    srv.start()
    yield f"http://127.0.0.1:{srv.server_port}", srv.server_port
    srv.stop(timeout=1)


def curl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return net.curl("--max-time", "20", *args, timeout=timeout)


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "big.bin"
    data = os.urandom(1 << 20) * 20     # 20 MiB
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest(), len(data)


def test_httpx_keepalive_reuses_connection(server):
    url, _ = server
    with httpx.Client() as client:
        ports = {client.get(url + "/port").text for _ in range(5)}
        r = client.get(url + "/a?b=c")
    assert len(ports) == 1
    assert r.status_code == 200 and r.text == "hello\n" and r.headers["x-path"] == "/a?b=c"
    assert "date" in r.headers


def test_curl_keepalive_several_urls(server):
    url, _ = server
    r = curl("-v", url + "/port", url + "/port", url + "/port")
    assert r.returncode == 0
    assert r.stderr.count(b"Re-using existing connection") == 2
    assert len(set(r.stdout.decode().split())) <= 1


def test_httpx_streamed_20mib_post_is_hashed(server, big_file):
    url, _ = server
    path, digest, size = big_file

    def gen():
        with open(path, "rb") as f:
            while chunk := f.read(256 * 1024):
                yield chunk

    with httpx.Client(timeout=30) as client:
        r = client.post(url + "/hash", content=gen())     # chunked upload
        assert r.text.split()[:3] == [str(size), digest, "None"]
        r = client.post(url + "/hash", content=path.read_bytes())    # Content-Length
        assert r.text.split()[:3] == [str(size), digest, str(size)]


def test_curl_20mib_post_with_expect_continue(server, big_file):
    url, _ = server
    path, digest, size = big_file
    r = curl("-H", "Expect: 100-continue", "--data-binary", f"@{path}", url + "/hash")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split() == [str(size), digest, str(size), "100-continue"]


def test_curl_chunked_upload(server, big_file):
    url, _ = server
    path, digest, size = big_file
    r = curl("-H", "Transfer-Encoding: chunked", "--data-binary", f"@{path}", url + "/hash")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split()[:3] == [str(size), digest, "None"]


def test_chunked_response(server):
    url, _ = server
    r = httpx.get(url + "/stream")
    assert r.text == "part0;part1;part2;part3;part4;"
    assert r.headers["transfer-encoding"] == "chunked"


def test_head(server):
    url, _ = server
    r = curl("-I", url + "/")
    head = r.stdout.decode().lower()
    assert head.startswith("http/1.1 200 ok")
    assert "content-length: 6" in head
    with httpx.Client() as client:
        r = client.head(url + "/")
        assert r.headers["content-length"] == "6" and r.content == b""
        assert client.get(url + "/").text == "hello\n"     # framing intact after HEAD


def test_204_and_304(server):
    url, _ = server
    with httpx.Client() as client:
        r = client.get(url + "/204")
        assert r.status_code == 204 and "content-length" not in r.headers
        r = client.get(url + "/304")
        assert r.status_code == 304 and r.headers["etag"] == '"v1"'
        assert "transfer-encoding" not in r.headers
        assert client.get(url + "/").text == "hello\n"


def test_http10_close(server):
    url, _ = server
    r = curl("-0", "-i", url + "/stream")
    out = r.stdout.replace(b"\r\n", b"\n").decode()
    assert out.startswith("HTTP/1.1 200 OK")
    assert "connection: close" in out and "chunked" not in out
    assert out.endswith("part0;part1;part2;part3;part4;")


def test_bad_request_gets_400(server):
    _, port = server
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        data = s.recv(4096)
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")


def test_slowloris_cut_while_others_served(server):
    url, port = server
    result = {}

    def slowloris():
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            start = time.monotonic()
            try:
                for byte in b"GET / HTTP/1.1\r\nHost: h\r\nX-Slow: " + b"a" * 100:
                    s.sendall(bytes([byte]))
                    gevent.sleep(0.2)
            except OSError:
                pass
            data = s.recv(4096)
            result["elapsed"] = time.monotonic() - start
            result["data"] = data

    g = gevent.spawn(slowloris)
    gevent.sleep(0.3)
    with httpx.Client() as client:
        start = time.monotonic()
        assert client.get(url + "/").text == "hello\n"
        assert time.monotonic() - start < 0.9
    g.join(timeout=10)
    assert result["data"].startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert 0.9 < result["elapsed"] < 3.0
