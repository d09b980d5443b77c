"""An upstream that breaks off a response in the middle, under an HTTP/2 client: the stream is
reset, the connection and its other streams go on, and the log holds one WARNING line for
it (as for HTTP/1.1), no ERROR and no traceback."""

from __future__ import annotations

import json
import socket

import gevent
import pytest

from tests.support.h2raw import RawH2
from tests.support.http_backend import Backend
from tests.support.net import connect, free_port, read_for, wait_until


def _truncating_backend(server, sock: socket.socket) -> None:
    sock.settimeout(5)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return
            data += chunk
        if b" /cut-chunked " in data:
            sock.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n400\r\n" + b"c" * 1024
                         + b"\r\n400\r\n" + b"c" * 100)
        elif b" /bad-chunk " in data:
            sock.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n400\r\n" + b"c" * 1024
                         + b"\r\nzz\r\n" + b"c" * 100)
            gevent.sleep(0.5)
        elif b" /cut-late " in data:
            sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n")
            for _ in range(8):
                sock.sendall(b"x" * 65536)
                gevent.sleep(0.05)
        else:
            sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n" + b"x" * 1000)
    except OSError:
        pass
    finally:
        sock.close()


@pytest.fixture(params=[262144, 0], ids=["read-ahead", "streamed"])
def front(lab, request):
    origin = lab.tcp(_truncating_backend)
    port = free_port()
    (lab.conf / "config.json").write_text(json.dumps({"upstream_pool": {"response_buffer": request.param}}))
    d = lab.vaned({"r.json": {"rule": "site", "listen": [f"127.0.0.1:{port}"],
                              "flow": {"proxy": {"input": {"upstream": f"http://{origin.target}"}}}}})
    d.wait_listening(port)
    return port, d


@pytest.mark.parametrize("path", [b"/cut", b"/cut-chunked", b"/bad-chunk", b"/cut-late"])
def test_truncated_response_is_one_warning(front, path):
    port, d = front
    since = len(d.lines)
    client = RawH2(port)
    try:
        answer = client.answer(client.get(path), 10)
        assert "reset" in answer or answer.get("status") == 502, answer
        assert client.goaway is None and not client.closed
    finally:
        client.close()
    d.wait_log(r"WARNING", since=since)
    gevent.sleep(0.3)                   # anything else it would log comes now
    new = "\n".join(d.lines[since:])
    assert d.count(r"Traceback|ERROR", since=since) == 0, new
    assert d.count(r"WARNING", since=since) == 1, new


@pytest.mark.parametrize("path", [b"/cut-chunked", b"/cut-late"])
def test_http11_client_gets_the_same_one_warning(front, path):
    port, d = front
    since = len(d.lines)
    with connect(port, timeout=5) as sock:
        sock.sendall(b"GET " + path + b" HTTP/1.1\r\nhost: site.test\r\n\r\n")
        read_for(sock, 5)                   # ends when vaned closes the broken answer
    assert wait_until(lambda: d.count(r"WARNING", since=since) >= 1)
    gevent.sleep(0.3)
    new = "\n".join(d.lines[since:])
    assert d.count(r"Traceback|ERROR", since=since) == 0, new
    assert d.count(r"WARNING", since=since) == 1, new


@pytest.mark.parametrize("version", ["h1", "h2"])
def test_backend_dying_mid_body_is_one_warning(lab, version):
    origin = Backend("dying", h2=version == "h2")
    lab.on_close(origin.stop)
    port = free_port()
    d = lab.vaned({"r.json": {"rule": "site", "listen": [f"127.0.0.1:{port}"],
                              "flow": {"proxy": {"input": {"upstream": origin.url, "version": version}}}}})
    d.wait_listening(port)
    since = len(d.lines)
    client = RawH2(port)
    try:
        sid = client.get(b"/data?n=50000000")
        assert client.pump(lambda: len(client.responses.get(sid, {}).get("body", b"")) > 100000, 10)
        origin.kill()
        answer = client.answer(sid, 10)
        assert "reset" in answer, {k: v for k, v in answer.items() if k != "body"}
        assert client.goaway is None and not client.closed
    finally:
        client.close()
    assert wait_until(lambda: d.count(r"WARNING", since=since) >= 1)
    gevent.sleep(0.3)
    new = "\n".join(d.lines[since:])
    assert d.count(r"Traceback|ERROR", since=since) == 0, new
    assert d.count(r"WARNING", since=since) == 1, new
