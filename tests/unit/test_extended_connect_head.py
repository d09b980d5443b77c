"""Extended CONNECT request heads (RFC 8441 §4, RFC 9220): the WebSocket request the flows
see, and the malformed ones refused on their stream."""

from __future__ import annotations

import pytest

from vane.net.h2.request import request_head
from vane.net.http.errors import HttpError

WS = [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"), (b":path", b"/chat?room=1"),
      (b":authority", b"ws.test"), (b"sec-websocket-version", b"13")]


def test_websocket_connect_is_a_websocket_get():
    req, length = request_head(WS, "https", 100)
    assert (req.method, req.path, req.query, req.host, req.upgrade) == ("GET", "/chat", "room=1", "ws.test",
                                                                        "websocket")
    assert length is None


def test_plain_requests_are_no_upgrade():
    req, _ = request_head([(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"),
                           (b":authority", b"ws.test")], "https", 100)
    assert req.upgrade is None


@pytest.mark.parametrize("fields, status", [
    ([(b":method", b"GET"), (b":protocol", b"websocket"), (b":scheme", b"https"), (b":path", b"/"),
      (b":authority", b"a")], 400),                                                     # not a CONNECT
    ([(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":authority", b"a")], 400),  # no :path/:scheme
    ([(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"), (b":path", b"/")], 400),
    ([(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":protocol", b"websocket"), (b":scheme", b"https"),
      (b":path", b"/"), (b":authority", b"a")], 400),                                   # repeated
    ([(b":method", b"CONNECT"), (b":protocol", b"chat"), (b":scheme", b"https"), (b":path", b"/"),
      (b":authority", b"a")], 501),                                                     # unknown protocol
    ([(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"), (b":path", b"x"),
      (b":authority", b"a")], 400),                                                     # not origin-form
])
def test_malformed_extended_connect(fields, status):
    with pytest.raises(HttpError) as info:
        request_head(fields, "https", 100)
    assert info.value.status == status
