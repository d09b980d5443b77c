"""The header-count and request-target limits hold the same for HTTP/1.1 and HTTP/2.

``VANE_SEC_MAX_HEADER_COUNT`` answers 431 past its count in either version (HTTP/2: on that
stream, the connection goes on); ``VANE_SEC_MAX_URI_BYTES`` answers 414 for a request target
past its length, however the target arrives (one read or trickled), before it reaches a flow.
"""

from __future__ import annotations

import json

import gevent
import pytest

from tests.support.h2raw import RawH2
from tests.support.net import connect, exchange, free_port, parse_responses, read_for

COUNT = 20
URI = 1024


@pytest.fixture
def front(lab, backend):
    port = free_port()
    d = lab.vaned({"r.json": {"rule": "site", "listen": [f"127.0.0.1:{port}"],
                              "flow": {"proxy": {"input": {"upstream": backend.url}}}}},
                  env={"VANE_SEC_MAX_HEADER_COUNT": str(COUNT), "VANE_SEC_MAX_URI_BYTES": str(URI)})
    d.wait_listening(port)
    return port, backend, d


def _h1(path: bytes, fields: int) -> bytes:
    extra = b"".join(b"x-f%d: 1\r\n" % i for i in range(fields - 2))
    return b"GET " + path + b" HTTP/1.1\r\nhost: site.test\r\n" + extra + b"connection: close\r\n\r\n"


def _h2(path: bytes, fields: int) -> list:
    return [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"site.test"), (b":path", path)] \
        + [(b"x-f%d" % i, b"1") for i in range(fields - 4)]


def test_h1_header_count(front):
    port, backend, d = front
    assert [r[0] for r in exchange(port, _h1(b"/a", COUNT))] == [200]
    assert [r[0] for r in exchange(port, _h1(b"/b", COUNT + 1))] == [431]
    assert backend.requests == 1


def test_h2_header_count_is_the_same_limit(front):
    port, backend, d = front
    client = RawH2(port)
    try:
        assert client.answer(client.request(_h2(b"/a", COUNT))).get("status") == 200
        assert client.answer(client.request(_h2(b"/b", COUNT + 1))).get("status") == 431
        assert client.answer(client.get(b"/c")).get("status") == 200   # the connection goes on
    finally:
        client.close()
    assert backend.requests == 2


def test_h2_trailers_past_the_count_end_the_stream_only(front):
    port, backend, d = front
    client = RawH2(port)
    try:
        head = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"site.test"),
                (b":path", b"/hash")]
        sid = client.request(head, b"abc", end=False)
        client.conn.send_headers(sid, [(b"x-t%d" % i, b"1") for i in range(COUNT + 1)], end_stream=True)
        client.flush()
        assert "reset" in client.answer(sid)
        assert client.answer(client.get(b"/c")).get("status") == 200
    finally:
        client.close()
    assert d.count(r"Traceback|ERROR") == 0, d.stderr


def test_h1_target_past_the_limit_is_414(front):
    port, backend, d = front
    fits = b"/" + b"a" * (URI - 1)
    assert [r[0] for r in exchange(port, _h1(fits, 3))] == [200]
    assert [r[0] for r in exchange(port, _h1(fits + b"a", 3))] == [414]
    assert [r[0] for r in exchange(port, _h1(b"/p?" + b"q" * URI, 3))] == [414]
    assert backend.requests == 1
    assert d.count(r"Traceback|ERROR") == 0, d.stderr


def test_h1_trickled_endless_target_is_414_not_buffered(front):
    port, backend, d = front
    sock = connect(port, timeout=5)

    def trickle() -> None:
        try:
            sock.sendall(b"GET /")
            for _ in range(64):             # 4 MiB of target if it were let through
                sock.sendall(b"a" * 65536)
                gevent.sleep(0)
        except OSError:
            pass

    g = gevent.spawn(trickle)
    try:
        answers = parse_responses(read_for(sock, 5))
    finally:
        g.kill()
        sock.close()
    assert [r[0] for r in answers] == [414]
    assert backend.requests == 0


def test_h2_path_past_the_limit_is_414_on_the_stream(front):
    port, backend, d = front
    client = RawH2(port)
    try:
        assert client.answer(client.get(b"/" + b"a" * (URI - 1))).get("status") == 200
        assert client.answer(client.get(b"/" + b"a" * URI)).get("status") == 414
        assert client.answer(client.get(b"/c")).get("status") == 200
    finally:
        client.close()
    assert backend.requests == 2
    assert d.count(r"Traceback|ERROR") == 0, d.stderr


def test_the_limit_setting_is_checked_at_boot(lab):
    d = lab.vaned({}, env={"VANE_SEC_MAX_URI_BYTES": "12"}, ready=False)
    assert d.wait(10) != 0
    assert "VANE_SEC_MAX_URI_BYTES" in d.stderr and "Traceback" not in d.stderr




# -- an HTTP/2 header block past VANE_SEC_MAX_HEADER_BYTES ---------------------------------------

@pytest.fixture
def small_headers(lab, backend):
    port = free_port()
    d = lab.vaned({"r.json": {"rule": "site", "listen": [f"127.0.0.1:{port}"],
                              "flow": {"proxy": {"input": {"upstream": backend.url}}}}},
                  env={"VANE_SEC_MAX_HEADER_BYTES": "4096"})
    d.wait_listening(port)
    return port, backend, d


def test_h2_header_block_past_the_limit_is_431_and_the_rest_goes_on(small_headers):
    port, backend, d = small_headers
    client = RawH2(port)
    head = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"site.test")]
    try:
        upload = client.request(head + [(b":path", b"/hash")], b"first half ", end=False)
        # the client indexes these fields in HPACK's table as it sends them
        big = client.request([(b":method", b"GET"), (b":scheme", b"http"),
                                         (b":authority", b"site.test"), (b":path", b"/headers")]
                             + [(b"x-a%d" % i, b"v" * 500) for i in range(10)])
        assert client.answer(big).get("status") == 431
        client.conn.send_data(upload, b"second half", end_stream=True)
        client.flush()
        done = client.answer(upload)
        # a later block refers to fields of the one refused: vaned's table is in step
        again = client.answer(client.get(b"/headers", extra=[(b"x-a9", b"v" * 500)]))
    finally:
        client.close()
    assert client.goaway is None
    assert done.get("status") == 200 and json.loads(done["body"])["length"] == len(b"first half second half")
    assert again.get("status") == 200
    assert ["x-a9", "v" * 500] in json.loads(again["body"])["headers"]
    assert d.count(r"Traceback|ERROR") == 0, d.stderr
