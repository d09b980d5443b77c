"""``Expect: 100-continue`` over HTTP/2 (RFC 9110 §10.1.1): vaned answers ``100`` once the
flow reads the body, and answers without it when the flow never needs the body."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.support.h2raw import RawH2
from tests.support.net import free_port

BODY = b"payload-" * 1024


@pytest.fixture
def front(lab, backend):
    port = free_port()
    d = lab.vaned({
        "r.json": {"rule": "site", "listen": [f"127.0.0.1:{port}"],
                   "flow": {"proxy": {"input": {"upstream": backend.url}}}},
        "s.json": {"rule": "fixed", "listen": [f"127.0.0.1:{port}"], "match": {"req.host": "fixed.test"},
                   "flow": {"respond": {"input": {"status": 403, "body": "no"}}}}})
    d.wait_listening(port)
    return port, backend, d


def _head(authority: bytes, path: bytes) -> list:
    return [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", authority), (b":path", path),
            (b"content-length", b"%d" % len(BODY)), (b"expect", b"100-continue")]


def test_proxied_body_gets_100_then_the_answer(front):
    port, backend, d = front
    client = RawH2(port)
    try:
        sid = client.request(_head(b"site.test", b"/hash"), end=False)
        # the client holds its body back until vaned asks for it
        assert client.pump(lambda: client.responses.get(sid, {}).get("informational"), 5), \
            client.responses
        assert client.responses[sid]["informational"] == [100] and "status" not in client.responses[sid]
        client.conn.send_data(sid, BODY, end_stream=True)
        client.flush()
        answer = client.answer(sid)
    finally:
        client.close()
    assert answer.get("status") == 200
    assert json.loads(answer["body"])["sha256"] == hashlib.sha256(BODY).hexdigest()
    assert d.count(r"Traceback|ERROR") == 0, d.stderr


def test_an_answer_without_the_body_comes_without_100(front):
    port, backend, d = front
    client = RawH2(port)
    try:
        sid = client.request(_head(b"fixed.test", b"/"), end=False)
        answer = client.answer(sid)
        assert answer.get("status") == 403 and "informational" not in answer
        assert client.answer(client.get(b"/x")).get("status") == 200   # the connection goes on
    finally:
        client.close()
    assert backend.requests == 1


def test_a_body_sent_without_waiting_gets_no_100(front):
    port, backend, d = front
    client = RawH2(port)
    try:
        sid = client.request(_head(b"site.test", b"/hash"), BODY)
        answer = client.answer(sid)
    finally:
        client.close()
    assert answer.get("status") == 200 and "informational" not in answer
    assert json.loads(answer["body"])["length"] == len(BODY)
