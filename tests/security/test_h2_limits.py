"""HTTP/2 abuse: rapid reset (CVE-2023-44487), streams past the limit, oversized header blocks.

A rapid-reset client opens streams and cancels them at once; each stream vaned starts costs a
flow walk and an upstream request. Streams cancelled in the read that opened them never
start, and early cancellations draw on a budget: past it the connection gets GOAWAY
(ENHANCE_YOUR_CALM). The test counts the upstream requests one attack connection causes.
"""

from __future__ import annotations

import gevent
import h2.errors
import pytest

from tests.support.h2raw import RawH2
from tests.support.net import free_port

MAX_STREAMS = 20


@pytest.fixture
def front(lab, backend):
    port = free_port()
    d = lab.vaned({"r.json": {"rule": "site", "listen": [f"127.0.0.1:{port}"],
                              "flow": {"proxy": {"input": {"upstream": backend.url}}}}},
                  env={"VANE_SEC_H2_MAX_STREAMS": str(MAX_STREAMS), "VANE_SEC_MAX_HEADER_COUNT": "50"})
    d.wait_listening(port)
    return port, backend, d


def _headers(path: bytes) -> list:
    return [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"site.test"), (b":path", path)]


@pytest.mark.parametrize("split", [False, True], ids=["pairs-in-one-write", "reset-in-the-next-write"])
def test_rapid_reset_is_bounded_per_connection(front, split):
    port, backend, d = front
    client = RawH2(port)
    sent = 0
    try:
        for _ in range(100):                            # up to 100 rounds of 50 HEADERS + RST_STREAM
            if client.closed or client.goaway is not None:
                break
            opened = []
            for _ in range(MAX_STREAMS if split else 50):   # the client keeps within the limit
                sid = client.conn.get_next_available_stream_id()
                client.conn.send_headers(sid, _headers(b"/sleep?s=0.2"), end_stream=True)
                opened.append(sid)
                if not split:
                    client.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
                sent += 1
            try:
                client.flush()
                if split:                               # vaned has started them by now
                    client.pump(lambda: client.goaway is not None, 0.02)
                    if client.goaway is not None:
                        break
                    for sid in opened:
                        client.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
                    client.flush()
            except OSError:
                break
            client.pump(lambda: client.goaway is not None, 0.01)
        client.pump(lambda: client.goaway is not None or client.closed, 5)
    finally:
        client.close()
    gevent.sleep(1.0)                                   # let started streams reach the backend
    assert sent >= 2 * MAX_STREAMS                     # the attack ran past the budget
    assert client.goaway is not None and client.goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert backend.requests <= 3 * MAX_STREAMS, (sent, backend.requests)
    assert d.count(r"Traceback|ERROR") == 0, d.stderr


def test_streams_past_the_limit_that_the_client_also_resets_raise_nothing(front):
    port, backend, d = front
    client = RawH2(port)
    try:
        for _ in range(MAX_STREAMS + 10):               # past the limit before SETTINGS were read
            sid = client.conn.get_next_available_stream_id()
            client.conn.send_headers(sid, _headers(b"/sleep?s=0.5"), end_stream=True)
        for sid in range(1 + 2 * MAX_STREAMS, 1 + 2 * (MAX_STREAMS + 10), 2):
            client.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        client.flush()
        client.pump(lambda: False, 1.0)                 # the first MAX_STREAMS finish meanwhile
        assert client.answer(client.get(b"/fine"), 5).get("status") == 200
    finally:
        client.close()
    assert d.count(r"Traceback|StreamClosedError|ERROR") == 0, d.stderr


def test_too_many_header_fields_is_431_on_the_stream(front):
    port, backend, d = front
    client = RawH2(port)
    try:
        many = _headers(b"/") + [(f"x-h{i}".encode(), b"1") for i in range(60)]
        assert client.answer(client.request(many)).get("status") == 431
        assert client.answer(client.get(b"/fine")).get("status") == 200
    finally:
        client.close()
    assert backend.requests == 1
