"""PROXY protocol v1/v2: bytes against the HAProxy specification, round trips, rejects."""

from __future__ import annotations

import pytest

from vane.net.proxy_protocol import ProxyProtocolError, header_v1, header_v2, parse

SIG = bytes.fromhex("0d0a0d0a000d0a515549540a")


def test_v1_tcp4_spec_example():
    h = header_v1(("192.168.0.1", 56324), ("192.168.0.11", 443))
    assert h == b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    assert parse(h + b"GET /") == (len(h), ("192.168.0.1", 56324), ("192.168.0.11", 443))


def test_v1_longest_line_fits_the_limit():
    full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    h = header_v1((full, 65535), (full, 65535))
    assert h == f"PROXY TCP6 {full} {full} 65535 65535\r\n".encode()
    assert len(h) == 104
    assert parse(h)[0] == 104


def test_v1_tcp6_normalised_and_zone_dropped():
    h = header_v1(("2001:DB8:0:0::1%eth0", 1234, 0, 2), ("::1", 443))
    assert h == b"PROXY TCP6 2001:db8::1 ::1 1234 443\r\n"


def test_v1_mapped_ipv4_counts_as_ipv4():
    h = header_v1(("::ffff:10.0.0.1", 5000), ("10.0.0.2", 80))
    assert h == b"PROXY TCP4 10.0.0.1 10.0.0.2 5000 80\r\n"


def test_v1_families_differ_is_unknown():
    h = header_v1(("10.0.0.1", 5000), ("::1", 80))
    assert h == b"PROXY UNKNOWN\r\n"
    assert parse(h) == (15, None, None)
    assert parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\nrest") == (35, None, None)


def test_v2_tcp4_bytes():
    h = header_v2(("192.168.0.1", 56324), ("192.168.0.11", 443))
    assert h == SIG + bytes.fromhex("21 11 000c c0a80001 c0a8000b dc04 01bb")
    assert parse(h + b"\x16\x03\x01") == (28, ("192.168.0.1", 56324), ("192.168.0.11", 443))


def test_v2_tcp6_and_udp():
    h = header_v2(("2001:db8::1", 1), ("2001:db8::2", 2))
    assert h[12:16] == bytes.fromhex("21 21 0024")
    assert len(h) == 16 + 36
    assert parse(h) == (52, ("2001:db8::1", 1), ("2001:db8::2", 2))
    assert header_v2(("1.2.3.4", 1), ("5.6.7.8", 2), "udp")[13] == 0x12
    assert header_v2(("::1", 1), ("::2", 2), "udp")[13] == 0x22


def test_v2_families_differ_is_unspec():
    h = header_v2(("1.2.3.4", 1), ("::1", 2))
    assert h == SIG + bytes.fromhex("21 00 0000")
    assert parse(h) == (16, None, None)


def test_v2_local_command_and_tlvs_skipped():
    local = SIG + bytes.fromhex("20 00 0000")
    assert parse(local) == (16, None, None)
    tlv = bytes.fromhex("04 0003 616263")  # PP2_TYPE_NOOP with 3 bytes
    body = bytes.fromhex("7f000001 7f000002 0050 01bb") + tlv
    h = SIG + bytes([0x21, 0x11]) + len(body).to_bytes(2, "big") + body
    assert parse(h + b"after") == (len(h), ("127.0.0.1", 80), ("127.0.0.2", 443))


def test_v2_unix_family_has_no_ip_addresses():
    body = b"\x00" * 216
    h = SIG + bytes([0x21, 0x31]) + len(body).to_bytes(2, "big") + body
    assert parse(h) == (232, None, None)


@pytest.mark.parametrize(
    "src,dst",
    [
        (("127.0.0.1", 0), ("127.0.0.1", 65535)),
        (("::", 1), ("fe80::1", 2)),
        (("203.0.113.9", 40000), ("198.51.100.1", 443)),
    ],
)
def test_round_trips(src, dst):
    for h in (header_v1(src, dst), header_v2(src, dst)):
        assert parse(h + b"payload") == (len(h), src, dst)


def test_incomplete_is_none():
    h1 = header_v1(("10.0.0.1", 1), ("10.0.0.2", 2))
    h2 = header_v2(("10.0.0.1", 1), ("10.0.0.2", 2))
    for h in (h1, h2):
        for i in range(len(h)):
            assert parse(h[:i]) is None, h[:i]


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n",
        b"PROXY TCP4 1.2.3.4  1.2.3.4 1 2\r\n",
        b"PROXY TCP4 ::1 1.2.3.4 1 2\r\n",
        b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 01 2\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 -1 2\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n",
        b"PROXY " + b"A" * 200,
        b"\r\n\r\n\x00\r\nQUIX\n" + b"\x21\x11\x00\x00",
        SIG + bytes.fromhex("31 11 000c") + b"\x00" * 12,  # version 3
        SIG + bytes.fromhex("22 11 000c") + b"\x00" * 12,  # unknown command
        SIG + bytes.fromhex("21 11 0004") + b"\x00" * 4,  # address block too short
        SIG + bytes.fromhex("21 41 0000"),  # unknown family
        SIG + bytes.fromhex("21 13 000c") + b"\x00" * 12,  # unknown transport
        b"\r\nxx",
    ],
)
def test_malformed_rejected(data):
    with pytest.raises(ProxyProtocolError):
        parse(data)


def test_builder_rejects_bad_input():
    with pytest.raises(ProxyProtocolError):
        header_v1(("example.com", 1), ("1.2.3.4", 2))
    with pytest.raises(ProxyProtocolError):
        header_v2(("1.2.3.4", 70000), ("1.2.3.4", 2))
    with pytest.raises(ProxyProtocolError):
        header_v2(("1.2.3.4", 1), ("1.2.3.4", 2), "sctp")
    assert issubclass(ProxyProtocolError, ValueError)
