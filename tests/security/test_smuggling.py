"""Request smuggling through vaned to a stock nginx origin, on real sockets.

Every case checks the two things smuggling breaks: each client gets the answer to its own
request, and the origin's access log holds exactly the requests clients made (never the
secret ``/admin``, which a rule denies). Classes: CL.TE and TE.CL ambiguities, TE.TE
obfuscations and other malformed framing (refused with 400 before any byte goes upstream),
0.CL through upgrade paths (a body announced but not sent), and HTTP/2 to HTTP/1.1
downgrades (fields HTTP/2 can carry that would split an HTTP/1.1 head).
"""

from __future__ import annotations

import pytest

from tests.support.h2raw import RawH2
from tests.support.net import connect, exchange, free_port, parse_responses, read_for, wait_until


def proxy_rules(port: int, origin: str) -> dict:
    return {
        "10-deny.json": {"rule": "no-admin", "listen": [f"127.0.0.1:{port}"], "priority": 10,
                         "match": {"req.path": {"prefix": "/admin"}},
                         "flow": {"deny": {"input": {"status": 403}}}},
        "20-proxy.json": {"rule": "site", "listen": [f"127.0.0.1:{port}"],
                          "flow": {"proxy": {"input": {"upstream": origin}}}},
    }


@pytest.fixture
def front(lab, nginx):
    port = free_port()
    d = lab.vaned(proxy_rules(port, nginx.url))
    d.wait_listening(port)
    return port, nginx, d


def origin_saw(nginx, count: int) -> list[str]:
    wait_until(lambda: len(nginx.requests()) >= count, 3)
    return nginx.requests()


# -- 0.CL through upgrade paths ---------------------------------------------------------------

SMUGGLED = b"GET /admin HTTP/1.1\r\nHost: site.test\r\n\r\n"

UPGRADE_VECTORS = {
    "upgrade-header-without-connection-token": (
        b"GET / HTTP/1.1\r\nHost: site.test\r\nUpgrade: websocket\r\n"
        b"Content-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED),
    "upgrade-with-content-length-body": (
        b"GET / HTTP/1.1\r\nHost: site.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Content-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED),
    "upgrade-with-chunked-body": (
        b"GET / HTTP/1.1\r\nHost: site.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%b\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)),
    "post-upgrade-with-body": (
        b"POST / HTTP/1.1\r\nHost: site.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
        b"Content-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED),
}


@pytest.mark.parametrize("vector", sorted(UPGRADE_VECTORS))
def test_an_upgrade_request_with_a_body_never_desyncs_the_pooled_connection(front, vector):
    port, nginx, _ = front
    attacker = exchange(port, UPGRADE_VECTORS[vector], 1.0)
    victim = exchange(port, b"GET /victim HTTP/1.1\r\nHost: site.test\r\n\r\n", 1.0)
    assert [r[0] for r in attacker] == [200], attacker
    assert victim == [(200, victim[0][1], b"origin /victim\n")], victim
    seen = origin_saw(nginx, 2)
    assert not any("/admin" in line for line in seen), seen
    assert [line.split()[:2] for line in seen] == [[attacker_method(vector), "/"], ["GET", "/victim"]], seen


def attacker_method(vector: str) -> str:
    return "POST" if vector.startswith("post") else "GET"


def test_the_origin_gets_websocket_alone_in_upgrade_and_only_a_websocket_101_is_taken(front):
    port, nginx, _ = front
    req = (b"GET /ws HTTP/1.1\r\nHost: site.test\r\nConnection: Upgrade\r\nUpgrade: h2c, websocket\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    answers = exchange(port, req, 1.0)
    assert [r[0] for r in answers] == [200]          # nginx does not switch: a plain answer comes back
    line = origin_saw(nginx, 1)[-1]
    assert "upgrade=websocket " in line, line         # h2c was not offered to the origin


def test_a_101_to_another_protocol_than_websocket_is_a_502_not_a_tunnel(lab):
    port = free_port()

    def rogue(server, conn):                          # switches to h2c whatever was asked
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
                     b"PRI * HTTP/2.0\r\n")
        read_for(conn, 1.0)

    upstream = lab.tcp(rogue)
    d = lab.vaned({"r.json": {"rule": "ws", "listen": [f"127.0.0.1:{port}"],
                              "flow": {"proxy": {"input": {"upstream": f"http://{upstream.target}"}}}}})
    d.wait_listening(port)
    answers = exchange(port, b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", 1.5)
    assert [r[0] for r in answers] == [502]


def test_a_101_to_a_plain_request_is_a_502(lab):
    port = free_port()

    def rogue(server, conn):
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        read_for(conn, 1.0)

    upstream = lab.tcp(rogue)
    d = lab.vaned({"r.json": {"rule": "p", "listen": [f"127.0.0.1:{port}"],
                              "flow": {"proxy": {"input": {"upstream": f"http://{upstream.target}"}}}}})
    d.wait_listening(port)
    assert [r[0] for r in exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 1.5)] == [502]


# -- responses: a backend's body relayed by the kernel (splice) --------------------------------

BIG = 1 << 20
EVIL = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL"


def _rogue_origin(lab):
    """Answers ``/big`` with a 1 MiB body and a second response right behind it, ``/short``
    with a body cut off before its Content-Length, anything else with ``hello``."""
    def handle(server, conn):
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            path = head.split(b" ", 2)[1]
            if path == b"/big":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b%b" % (BIG, b"x" * BIG, EVIL))
            elif path == b"/short":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (BIG, b"x" * 300_000))
                return
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")

    return lab.tcp(handle)


@pytest.fixture
def rogue_front(lab):
    origin = _rogue_origin(lab)
    port = free_port()
    d = lab.vaned({"r.json": {"rule": "p", "listen": [f"127.0.0.1:{port}"],
                              "flow": {"proxy": {"input": {"upstream": f"http://{origin.target}"}}}}})
    d.wait_listening(port)
    return port, d


def test_a_response_smuggled_behind_a_relayed_body_never_reaches_the_next_client(rogue_front):
    port, d = rogue_front
    for _ in range(3):
        attacker = exchange(port, b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n", 1.5)
        assert [(r[0], len(r[2])) for r in attacker] == [(200, BIG)]
        victim = exchange(port, b"GET /victim HTTP/1.1\r\nHost: a\r\n\r\n", 1.0)
        assert [(r[0], r[2]) for r in victim] == [(200, b"hello")], victim
    assert d.count(r"Traceback|ERROR") == 0, d.stderr


def test_a_relayed_body_cut_short_by_the_backend_ends_the_client_connection(rogue_front):
    port, d = rogue_front
    with connect(port, timeout=5.0) as sock:
        sock.sendall(b"GET /short HTTP/1.1\r\nHost: a\r\n\r\n")
        got = read_for(sock, 3.0)           # ends at the close, well before the 3 s
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"content-length: %d" % BIG in head.lower()
    assert body == b"x" * 300_000           # what came, and then the connection closed
    victim = exchange(port, b"GET /victim HTTP/1.1\r\nHost: a\r\n\r\n", 1.0)
    assert [(r[0], r[2]) for r in victim] == [(200, b"hello")]
    assert d.count(r"Traceback|ERROR") == 0, d.stderr


# -- CL.TE, TE.CL, TE.TE and malformed framing -------------------------------------------------

def _smuggle(head: bytes) -> bytes:
    return head + b"\r\n0\r\n\r\n" + SMUGGLED


FRAMING_VECTORS = {
    "cl-and-te": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n",
    "te-and-cl": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n",
    "te-list": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n",
    "te-identity-chunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity, chunked\r\n",
    "te-xchunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n",
    "te-twice": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    "te-space-before-colon": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n",
    "te-obs-fold": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n",
    "te-on-http10": b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n",
    "te-vertical-tab": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\x0bchunked\r\n",
    "cl-twice-equal": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n",
    "cl-twice-different": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 40\r\n",
    "cl-list": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n",
    "cl-plus": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n",
    "cl-hex": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x4\r\n",
    "cl-negative": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -4\r\n",
    "nul-in-value": b"POST / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\nContent-Length: 4\r\n",
    "space-in-name": b"POST / HTTP/1.1\r\nHost: a\r\nContent Length: 4\r\n",
    "two-hosts": b"POST / HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 4\r\n",
}


@pytest.mark.parametrize("vector", sorted(FRAMING_VECTORS))
def test_ambiguous_framing_is_refused_before_anything_goes_upstream(front, vector):
    port, nginx, _ = front
    answers = exchange(port, _smuggle(FRAMING_VECTORS[vector] + b"\r\n4"), 1.0)
    assert [r[0] for r in answers] == [400], answers   # one answer, then the connection is closed
    exchange(port, b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n", 1.0)
    assert [line.split()[1] for line in origin_saw(nginx, 1)] == ["/after"]


MALFORMED_BODIES = {
    "chunk-size-not-hex": b"zz\r\nabc\r\n0\r\n\r\n",
    "chunk-size-overflow": b"ffffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
    "chunk-bare-lf": b"3\nabc\n0\n\n",
    "chunk-extension-bare-cr": b"3;x\rabc\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("vector", sorted(MALFORMED_BODIES))
def test_malformed_chunked_bodies_never_reach_the_origin_as_requests(front, vector):
    port, nginx, _ = front
    head = b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    answers = exchange(port, head + MALFORMED_BODIES[vector] + SMUGGLED, 1.5)
    assert all(status >= 400 for status, _, _ in answers), answers
    exchange(port, b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n", 1.0)
    seen = origin_saw(nginx, 1)
    assert not any("/admin" in line for line in seen), seen
    assert seen[-1].split()[1] == "/after"


def test_bare_lf_request_line_is_refused(front):
    port, nginx, _ = front
    assert [r[0] for r in exchange(port, b"GET / HTTP/1.1\nHost: a\n\n" + SMUGGLED, 1.0)] == [400]
    assert nginx.requests() == []


def test_pipelined_requests_reach_the_origin_one_by_one(front):
    port, nginx, _ = front
    with connect(port, timeout=5.0) as sock:
        sock.sendall(b"POST /one HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
                     b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n"
                     b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\n")
        answers = parse_responses(read_for(sock, 1.5))
    assert [r[0] for r in answers] == [200, 200, 403]
    assert [line.split()[1] for line in origin_saw(nginx, 2)] == ["/one", "/two"]


def test_a_large_body_relayed_by_the_kernel_ends_where_its_length_says(front):
    """A body past what one read holds moves socket to socket (splice), beyond the parser's
    sight: requests inside it stay body, and the request behind it is parsed afresh."""
    port, nginx, _ = front
    size = 512 * 1024
    body = (SMUGGLED * (size // len(SMUGGLED) + 1))[:size]
    with connect(port, timeout=5.0) as sock:
        sock.sendall(b"POST /one HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size + body[:1000])
        read_for(sock, 0.2)                 # the head is upstream; the rest of the body is not read yet
        sock.sendall(body[1000:] + b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n"
                     b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\n")
        answers = parse_responses(read_for(sock, 1.5))
    assert [(r[0], r[2]) for r in answers] == [(200, b"origin /one\n"), (200, b"origin /two\n"),
                                               (403, answers[2][2])], answers
    seen = origin_saw(nginx, 2)
    assert [line.split()[:2] for line in seen] == [["POST", "/one"], ["GET", "/two"]], seen
    assert seen[0].endswith(f"len={size}")


# -- HTTP/2 to HTTP/1.1 downgrades -------------------------------------------------------------

def _base(path: bytes = b"/", method: bytes = b"GET", authority: bytes = b"site.test") -> list:
    return [(b":method", method), (b":scheme", b"http"), (b":authority", authority), (b":path", path)]


H2_VECTORS = {
    "crlf-in-value": _base() + [(b"x-a", b"b\r\nTransfer-Encoding: chunked")],
    "lf-in-value": _base() + [(b"x-a", b"b\nHost: evil")],
    "nul-in-value": _base() + [(b"x-a", b"b\x00c")],
    "transfer-encoding": _base(method=b"POST") + [(b"transfer-encoding", b"chunked")],
    "connection": _base() + [(b"connection", b"close")],
    "keep-alive": _base() + [(b"keep-alive", b"timeout=5")],
    "upgrade": _base() + [(b"upgrade", b"websocket")],
    "te-gzip": _base() + [(b"te", b"gzip")],
    "uppercase-name": _base() + [(b"X-Upper", b"1")],
    "colon-in-name": _base() + [(b"x:a", b"1")],
    "space-in-name": _base() + [(b"x a", b"1")],
    "crlf-in-path": _base(path=b"/ HTTP/1.1\r\nHost: a\r\n\r\nGET /admin"),
    "space-in-path": _base(path=b"/a b"),
    "absolute-path": _base(path=b"http://site.test/admin"),
    "crlf-in-method": _base(method=b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\nGET"),
    "space-in-method": _base(method=b"GET /admin"),
    "authority-with-at": _base(authority=b"user@site.test"),
    "authority-with-slash": _base(authority=b"site.test/admin"),
    "authority-host-mismatch": _base() + [(b"host", b"other.test")],
    "pseudo-after-regular": [(b":method", b"GET"), (b"x-a", b"1"), (b":scheme", b"http"),
                             (b":authority", b"a"), (b":path", b"/")],
    "duplicate-path": _base() + [(b":path", b"/admin")],
    "unknown-pseudo": _base() + [(b":evil", b"1")],
    "no-scheme": [(b":method", b"GET"), (b":authority", b"a"), (b":path", b"/")],
}


@pytest.mark.parametrize("vector", sorted(H2_VECTORS))
def test_http2_fields_that_would_split_an_http1_head_are_stream_errors(front, vector):
    port, nginx, d = front
    client = RawH2(port)
    try:
        bad = client.request(H2_VECTORS[vector])
        answer = client.answer(bad)
        assert answer.get("status") == 400 or "reset" in answer, answer
        good = client.get(b"/fine")                   # the same connection keeps serving
        assert client.answer(good).get("status") == 200
    finally:
        client.close()
    seen = origin_saw(nginx, 1)
    assert [line.split()[1] for line in seen] == ["/fine"], seen
    assert d.count(r"Traceback|ERROR") == 0, d.stderr


def test_http2_content_length_must_match_the_data(front):
    port, nginx, _ = front
    client = RawH2(port)
    try:
        sid = client.request(_base(b"/upload", b"POST") + [(b"content-length", b"4")], SMUGGLED)
        answer = client.answer(sid)
        assert "reset" in answer or answer.get("status", 0) >= 400, answer
        good = client.get(b"/fine")
        assert client.answer(good).get("status") == 200
    finally:
        client.close()
    assert not any("/admin" in line for line in origin_saw(nginx, 1))
