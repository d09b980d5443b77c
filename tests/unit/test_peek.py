"""Protocol detection: classify / classify_datagram tables and peek over real sockets."""

from __future__ import annotations

import socket
import struct
import time

import gevent
import pytest

from tests.support.net import tcp_pair
from vane.net.peek import H2_PREFACE, PROTOCOLS, classify, classify_datagram, detect, peek

DNS_QUERY = (
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"  # id, RD, one question
    b"\x07example\x03com\x00\x00\x01\x00\x01"
)
DNS_QUERY_EDNS = (
    b"\xab\xcd\x01\x20\x00\x01\x00\x00\x00\x00\x00\x01"
    b"\x07example\x03com\x00\x00\x1c\x00\x01"
    b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00"  # OPT record
)
TLS_HELLO_START = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


def quic_initial(version: int = 1, dcid: bytes = b"\x01" * 8) -> bytes:
    head = bytes([0xC3]) + struct.pack("!I", version) + bytes([len(dcid)]) + dcid + b"\x00"
    return head + b"\x00" * (1200 - len(head))


@pytest.fixture
def pair():
    a, b = tcp_pair()
    yield a, b
    a.close()
    b.close()


def test_protocol_names():
    assert PROTOCOLS == ("tls", "http", "h2c", "ssh", "dns", "quic", "unknown")


@pytest.mark.parametrize(
    "data,expected",
    [
        (TLS_HELLO_START, "tls"),
        (b"\x16\x03\x03", "tls"),
        (b"\x16\x03\x00\x00", "tls"),  # SSLv3 record version
        (b"GET / HTTP/1.1\r\n", "http"),
        (b"POST /x HTTP/1.1\r\n", "http"),
        (b"CONNECT example.com:443 HTTP/1.1\r\n", "http"),
        (b"OPTIONS * HTTP/1.1\r\n", "http"),
        (b"PROPFIND /dav HTTP/1.1\r\n", "http"),
        (b"VERSION-CONTROL /x HTTP/1.1\r\n", "http"),
        (b"PRI / HTTP/1.1\r\n", "http"),  # diverges from the preface: a plain method token
        (H2_PREFACE, "h2c"),
        (H2_PREFACE + b"\x00\x00\x12\x04\x00", "h2c"),
        (b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n", "ssh"),
        (b"SSH-", "ssh"),
        (struct.pack("!H", len(DNS_QUERY)) + DNS_QUERY, "dns"),
        (struct.pack("!H", len(DNS_QUERY_EDNS)) + DNS_QUERY_EDNS, "dns"),
        (struct.pack("!H", len(DNS_QUERY))[:2] + DNS_QUERY[:12], "dns"),
        (b"get / HTTP/1.1\r\n", "unknown"),  # methods are case-sensitive
        (b"GET/ HTTP/1.1", "unknown"),
        (b"\x00\x00\x00\x00", "unknown"),
        (b"\x16\x02\x01" + b"\x00" * 12, "unknown"),
        (b"\x16\x03\x09" + b"\x00" * 12, "unknown"),
        (b"hello world\r\n", "unknown"),
        (b"ABCDEFGHIJKLMNOPQRSTUVWXYZ ", "unknown"),  # too long for a method
        (b"\xff\xf4\xff\xfd\x06" + b"\x00" * 12, "unknown"),  # telnet
    ],
)
def test_classify(data, expected):
    assert classify(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x16",
        b"\x16\x03",
        b"G",
        b"GE",
        b"GET",
        b"DELETE",
        b"P",
        b"PRI * HTTP/2.0\r\n",
        H2_PREFACE[:-1],
        b"S",
        b"SSH",
        b"\x00",
        b"\x00\x1d\x12\x34\x01",  # a DNS length and part of a header
        b"\x16\x02\x01",  # not TLS, but could still be a DNS length and id
    ],
)
def test_classify_needs_more(data):
    assert classify(data) is None


def test_every_prefix_of_a_decided_stream_is_none_or_the_answer():
    for stream, answer in [
        (H2_PREFACE + b"rest", "h2c"),
        (b"GET / HTTP/1.1\r\n", "http"),
        (b"SSH-2.0-x\r\n", "ssh"),
        (TLS_HELLO_START, "tls"),
        (struct.pack("!H", len(DNS_QUERY)) + DNS_QUERY, "dns"),
    ]:
        for i in range(len(stream) + 1):
            assert classify(stream[:i]) in (None, answer), stream[:i]


def test_classify_unknown_never_waits_long():
    """Garbage is decided quickly: no prefix needs more than the DNS header's 14 bytes."""
    for data in (b"\x00\x05abc", b"hello", b"\x7f\x45\x4c\x46", b"\x80\x00\x00\x00\x00"):
        assert classify(data + b"\x00" * 14) == "unknown"


@pytest.mark.parametrize(
    "data,expected",
    [
        (quic_initial(), "quic"),
        (quic_initial(0x6B3343CF), "quic"),  # QUIC v2
        (quic_initial(0xFF00001D), "quic"),  # draft-29
        (quic_initial(0x1A2A3A4A), "quic"),  # greased version
        (DNS_QUERY, "dns"),
        (DNS_QUERY_EDNS, "dns"),
        (quic_initial(0x12345678), "unknown"),
        (quic_initial(dcid=b"\x01" * 21), "unknown"),
        (b"\x40\x00\x00\x00\x01\x08", "unknown"),  # short header
        (DNS_QUERY[:2] + b"\x81\x80" + DNS_QUERY[4:], "unknown"),  # a response
        (DNS_QUERY[:4] + b"\x00\x00" + DNS_QUERY[6:], "unknown"),  # no question
        (DNS_QUERY[:6] + b"\x00\x09" + DNS_QUERY[8:], "unknown"),  # counts overrun the size
        (b"", "unknown"),
        (b"hello", "unknown"),
    ],
)
def test_classify_datagram(data, expected):
    assert classify_datagram(data) == expected


def test_peek_does_not_consume(pair):
    a, b = pair
    a.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = peek(b, timeout=1)
    assert data.startswith(b"GET / ")
    assert b.recv(100) == b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def test_peek_waits_for_a_decisive_prefix(pair):
    a, b = pair

    def dribble():
        for part in (b"PRI * HTT", b"P/2.0\r\n\r\n", b"SM\r\n\r\n"):
            a.sendall(part)
            gevent.sleep(0.02)

    g = gevent.spawn(dribble)
    data = peek(b, timeout=1)
    assert data == H2_PREFACE
    assert classify(data) == "h2c"
    g.join()


def test_peek_custom_want(pair):
    a, b = pair
    g = gevent.spawn(lambda: [a.sendall(b"x" * 10), gevent.sleep(0.02), a.sendall(b"y" * 10)])
    assert peek(b, timeout=1, want=lambda d: len(d) >= 15) == b"x" * 10 + b"y" * 10
    g.join()


def test_peek_stops_at_max_bytes(pair):
    a, b = pair
    a.sendall(b"G" * 100)  # undecided forever, but the cap is reached
    t0 = time.monotonic()
    assert peek(b, max_bytes=50, timeout=1) == b"G" * 50
    assert time.monotonic() - t0 < 0.6


def test_peek_timeout_with_nothing(pair):
    _, b = pair
    t0 = time.monotonic()
    assert peek(b, timeout=0.1) == b""
    assert 0.09 <= time.monotonic() - t0 < 0.6


def test_peek_timeout_with_partial_data(pair):
    a, b = pair
    a.sendall(b"GE")
    t0 = time.monotonic()
    assert peek(b, timeout=0.15) == b"GE"
    assert 0.14 <= time.monotonic() - t0 < 0.8


def test_peek_peer_closed(pair):
    a, b = pair
    a.close()
    assert peek(b, timeout=1) == b""


def test_peek_partial_then_half_close_returns_at_once(pair):
    a, b = pair
    a.sendall(b"GE")
    a.shutdown(socket.SHUT_WR)
    t0 = time.monotonic()
    assert peek(b, timeout=2) == b"GE"
    assert time.monotonic() - t0 < 1.0


def test_peek_reset(pair):
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    a.close()
    assert peek(b, timeout=1) == b""


def test_detect(pair):
    a, b = pair
    a.sendall(b"SSH-2.0-x\r\n")
    assert detect(b, timeout=1) == ("ssh", b"SSH-2.0-x\r\n")


def test_detect_undecided_is_unknown(pair):
    a, b = pair
    a.sendall(b"GET")
    assert detect(b, timeout=0.05) == ("unknown", b"GET")
