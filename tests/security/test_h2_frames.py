"""HTTP/2 frames a hostile or unusual client sends to a real vaned (h2c, prior knowledge).

A flow that cannot block (here ``respond``) is answered by the connection's reader itself;
the answer must still wait for window when the client grants little, and a request with a
body still gets its own greenlet. A header block that never ends, or a protocol violation,
ends that connection with GOAWAY and nothing else.
"""

from __future__ import annotations

import h2.errors
import h2.events
import pytest
from hyperframe.frame import ContinuationFrame, HeadersFrame

from tests.support.h2raw import RawH2
from tests.support.net import free_port

BIG = "b" * 70000       # past the default 65535-byte windows


@pytest.fixture
def front(lab):
    port = free_port()
    d = lab.vaned({"r.json": [
        {"rule": "small", "listen": [f"127.0.0.1:{port}"], "match": {"req.path": "/small"},
         "flow": {"respond": {"input": {"body": "hello"}}}},
        {"rule": "big", "listen": [f"127.0.0.1:{port}"], "match": {"req.path": "/big"},
         "flow": {"respond": {"input": {"body": BIG}}}},
    ]}, env={"VANE_SEC_MAX_HEADER_BYTES": "16384"})
    d.wait_listening(port)
    return port, d


def test_many_requests_in_one_write_all_answered(front):
    port, d = front
    client = RawH2(port)
    try:
        sids = []
        for _ in range(50):
            sid = client.conn.get_next_available_stream_id()
            client.conn.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"),
                                           (b":authority", b"site.test"), (b":path", b"/small")], end_stream=True)
            sids.append(sid)
        client.flush()
        answers = [client.answer(sid) for sid in sids]
    finally:
        client.close()
    assert all(a.get("status") == 200 and a.get("body") == b"hello" and a.get("ended") for a in answers), answers


def test_answer_larger_than_the_window_waits_for_credit(front):
    port, d = front
    client = RawH2(port, window=1000)        # 1000 bytes per stream until the client credits more
    try:
        answer = client.answer(client.get(b"/big"), 10)
    finally:
        client.close()
    assert answer.get("status") == 200 and answer.get("body") == BIG.encode() and answer.get("ended")


def test_request_with_a_body_to_a_flow_that_cannot_block(front):
    port, d = front
    client = RawH2(port)
    try:
        sid = client.request([(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"site.test"),
                              (b":path", b"/small")], end=False)
        for _ in range(3):
            client.conn.send_data(sid, b"x" * 16000)
        client.conn.end_stream(sid)
        client.flush()
        answer = client.answer(sid, 10)
        again = client.answer(client.get(b"/small"))
    finally:
        client.close()
    assert answer.get("status") == 200 and answer.get("body") == b"hello"
    assert again.get("status") == 200
    assert d.count(r"Traceback|ERROR") == 0, d.stderr


def test_header_block_that_never_ends_is_cut(front):
    port, d = front
    client = RawH2(port)
    try:
        block = client.conn.encoder.encode([(b":method", b"GET"), (b":scheme", b"http"),
                                            (b":authority", b"site.test"), (b":path", b"/small")])
        flood = HeadersFrame(1, block, flags=set()).serialize()
        flood += b"".join(ContinuationFrame(1, b"\x00" * 1000).serialize() for _ in range(100))
        client.sock.sendall(flood)
        goaway = None
        while goaway is None:                   # read what vaned says, sending nothing more
            data = client.sock.recv(65536)
            if not data:
                break
            for event in client.conn.receive_data(data):
                if isinstance(event, h2.events.ConnectionTerminated):
                    goaway = event
    finally:
        client.close()
    assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    fresh = RawH2(port)                         # the daemon goes on serving
    try:
        assert fresh.answer(fresh.get(b"/small")).get("status") == 200
    finally:
        fresh.close()
    assert d.count(r"Traceback|ERROR") == 0, d.stderr
