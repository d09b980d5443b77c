"""A client's mistake is a 4xx and at most one info line: never ERROR, a traceback or a 500.

Each case drives a real vaned with a real client into a condition the client caused (a body
cut off or over the limit, a reset stream, a path no file can have, too many query fields, a
malformed HTTP/2 path) and checks the answer and the daemon's log.
"""

from __future__ import annotations

import socket

import gevent
import h2.errors
import pytest

from tests.support.h2raw import RawH2
from tests.support.net import connect, exchange, free_port, parse_responses, read_for, wait_until

CLEAN = r"Traceback|ERROR|CRITICAL"


@pytest.fixture
def front(lab, backend, tmp_path):
    port = free_port()
    (tmp_path / "index.html").write_text("home")
    rules = {
        "10-body.json": {"rule": "reads-body", "listen": [f"127.0.0.1:{port}"],
                         "match": {"req.path": {"prefix": "/body"}},
                         "flow": {"respond": {"input": {"body": "got {{req.body}}"}}}},
        "11-args.json": {"rule": "reads-args", "listen": [f"127.0.0.1:{port}"],
                         "match": {"req.path": {"prefix": "/args"}},
                         "flow": {"respond": {"input": {"body": "debug={{req.arg.debug}}"}}}},
        "12-static.json": {"rule": "files", "listen": [f"127.0.0.1:{port}"],
                           "match": {"req.path": {"prefix": "/files"}},
                           "flow": {"static": {"input": {"root": str(tmp_path), "strip_prefix": "/files"},
                                               "output": {"success": {"respond": {}},
                                                          "*": {"deny": {"input": {"status": 404}}}}}}},
        "20-proxy.json": {"rule": "site", "listen": [f"127.0.0.1:{port}"],
                          "flow": {"proxy": {"input": {"upstream": backend.url}}}},
    }
    d = lab.vaned(rules, env={"VANE_MAX_BODY_SIZE": "1000", "VANE_SEC_BODY_IDLE_TIMEOUT_SECS": "1"})
    d.wait_listening(port)
    return port, d


def test_a_body_over_the_limit_is_413(front):
    port, d = front
    answers = exchange(port, b"POST /body HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000, 1.5)
    assert [a[0] for a in answers] == [413]
    assert d.count(CLEAN) == 0, d.stderr


@pytest.mark.parametrize("path", ["/body", "/echo"])
def test_a_client_gone_mid_body(front, path):
    port, d = front
    with connect(port, timeout=5.0) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 900\r\n\r\n".encode() + b"x" * 100)
        gevent.sleep(0.2)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    gevent.sleep(0.5)
    assert exchange(port, b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n", 1.0)[0][0] == 200
    assert d.count(CLEAN) == 0, d.stderr


def test_a_body_that_stops_coming_is_408(front):
    port, d = front
    with connect(port, timeout=5.0) as sock:
        sock.sendall(b"POST /body HTTP/1.1\r\nHost: a\r\nContent-Length: 900\r\n\r\n" + b"x" * 100)
        answers = parse_responses(read_for(sock, 3))
    assert [a[0] for a in answers] == [408]
    assert d.count(CLEAN) == 0, d.stderr


def test_an_http2_stream_reset_mid_body(front):
    port, d = front
    client = RawH2(port)
    try:
        for path in (b"/body", b"/echo"):
            sid = client.request([(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"a"),
                                  (b":path", path), (b"content-length", b"900")], b"x" * 100, end=False)
            client.pump(lambda: False, 0.2)
            client.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            client.flush()
        assert client.answer(client.get(b"/ok")).get("status") == 200
    finally:
        client.close()
    gevent.sleep(0.3)
    assert d.count(CLEAN) == 0, d.stderr


@pytest.mark.parametrize("path", ["/files/%ff%fe", "/files/%c3%28.html", "/files/%80"])
def test_a_path_that_is_not_utf8_is_not_found(front, path):
    port, d = front
    assert [a[0] for a in exchange(port, f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode(), 1.0)] == [404]
    assert d.count(CLEAN) == 0, d.stderr


def test_too_many_query_fields_is_400(front):
    port, d = front
    query = "&".join(f"a{i}=1" for i in range(400)) + "&debug=1"
    answers = exchange(port, f"GET /args?{query} HTTP/1.1\r\nHost: a\r\n\r\n".encode(), 1.0)
    assert [a[0] for a in answers] == [400]
    assert exchange(port, b"GET /args?debug=1 HTTP/1.1\r\nHost: a\r\n\r\n", 1.0)[0][2] == b"debug=1"
    assert d.count(CLEAN) == 0, d.stderr


def test_a_space_in_an_http2_path_is_400(front):
    port, d = front
    client = RawH2(port)
    try:
        assert client.answer(client.get(b"/a b")).get("status") == 400
        assert client.answer(client.get(b"/ok")).get("status") == 200
    finally:
        client.close()
    assert d.count(CLEAN) == 0, d.stderr


def test_client_errors_are_logged_once_per_interval_at_info(front):
    port, d = front
    mark = len(d.lines)
    for _ in range(20):
        exchange(port, b"POST /body HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000, 0.5)
    wait_until(lambda: d.count(r"rejected with 413", mark) >= 1, 3)
    assert d.count(r"INFO .*rejected with 413", mark) == 1, d.stderr
    assert d.count(CLEAN) == 0, d.stderr


def test_each_upstream_failure_is_one_warning_naming_rule_upstream_and_request(lab):
    port, dead = free_port(), free_port()
    d = lab.vaned({"r.json": {"rule": "to-dead", "listen": [f"127.0.0.1:{port}"],
                              "flow": {"proxy": {"input": {"upstream": f"http://127.0.0.1:{dead}",
                                                           "retries": 0}}}}})
    d.wait_listening(port)
    mark = len(d.lines)
    answers = exchange(port, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", 1.0)
    assert [a[0] for a in answers] == [502]
    idx = d.wait_log(rf"WARNING vane\.upstream: upstream http://127\.0\.0\.1:{dead} failed \(connect\) "
                     r"for rule to-dead, request [0-9a-f-]{36}/1: ", since=mark)
    assert idx >= 0
    with connect(port, timeout=5.0) as sock:                      # ten more within a second
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n" * 10)
        assert [a[0] for a in parse_responses(read_for(sock, 0.5))] == [502] * 10
    assert d.count(r"vane\.upstream: upstream", mark) <= 2          # rate-limited per rule and upstream
    assert d.count(CLEAN) == 0, d.stderr
