"""Protocol detection on the first bytes of a connection, without consuming them (DESIGN.md §5, §6).

``classify`` names the protocol of a TCP byte prefix (the ``peek.protocol`` KV value and the
branches of ``detect``), ``classify_datagram`` does the same for one UDP datagram, and ``peek``
reads a socket's receive queue with ``MSG_PEEK`` until the prefix is decisive.
"""

from __future__ import annotations

import socket
import time
from typing import Callable

import gevent
from gevent.monkey import get_original
from gevent.socket import wait_read

PROTOCOLS: tuple[str, ...] = ("tls", "http", "h2c", "ssh", "dns", "quic", "unknown")

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_SSH = b"SSH-"
_MAX_METHOD = 20  # longest token still taken for an HTTP/1 method ("VERSION-CONTROL" is 15)
_METHOD_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ-_")
_DNS_HEADER = 12
_DNS_MIN_QUERY = _DNS_HEADER + 5  # header + root name, qtype, qclass
_QUIC_V1 = 0x00000001
_QUIC_V2 = 0x6B3343CF

_poll = get_original("select", "poll")
_POLL_HUP = 0x2000 | 0x10 | 0x8  # POLLRDHUP | POLLHUP | POLLERR


def classify(data: bytes) -> str | None:
    """Name the protocol of a TCP byte prefix; None while more bytes could change the answer."""
    if not data:
        return None
    first = data[0]
    if first == 0x16:
        return _classify_tls(data)
    if first == 0x50 and H2_PREFACE.startswith(data[:24]):  # "P"
        if len(data) < 24:
            return None
        return "h2c"
    if first == 0x53 and _SSH.startswith(data[:4]):  # "S"
        return "ssh" if len(data) >= 4 else None
    if 0x41 <= first <= 0x5A:  # A-Z
        verdict = _method_token(data)
        if verdict is not False:
            return verdict
    return _classify_dns_stream(data)


def _classify_tls(data: bytes) -> str | None:
    if len(data) < 3:
        return None if len(data) < 2 or data[1] == 3 else _classify_dns_stream(data)
    if data[1] == 3 and data[2] <= 4:
        return "tls"
    return _classify_dns_stream(data)


def _method_token(data: bytes) -> str | None | bool:
    """"http" for an upper-case token followed by a space, None if undecided, False if not."""
    end = min(len(data), _MAX_METHOD + 1)
    for i in range(1, end):
        c = data[i]
        if c == 0x20:
            return "http"
        if c not in _METHOD_CHARS:
            return False
    return None if len(data) <= _MAX_METHOD else False


def _classify_dns_stream(data: bytes) -> str | None:
    """DNS over TCP: a 2-byte length, then a query header that fits in that length."""
    n = len(data)
    if n >= 2:
        length = (data[0] << 8) | data[1]
        if length < _DNS_MIN_QUERY:
            return "unknown"
    if n >= 5 and not _dns_flags_ok(data, 2, n - 2):
        return "unknown"
    if n < 2 + _DNS_HEADER:
        return None
    return "dns" if _dns_header_ok(data, 2, length) else "unknown"


def _dns_flags_ok(data: bytes, off: int, have: int) -> bool:
    """Check the flag bytes present so far: a query (QR=0), opcode 0-2/4/5, Z=0, RCODE=0."""
    b = data[off + 2] if have > 2 else 0
    if b & 0x80:
        return False
    opcode = (b >> 3) & 0x0F
    if opcode == 3 or opcode > 5:
        return False
    if have > 3:
        c = data[off + 3]
        if c & 0x40 or c & 0x0F:
            return False
    return True


def _dns_header_ok(data: bytes, off: int, length: int) -> bool:
    if not _dns_flags_ok(data, off, _DNS_HEADER):
        return False
    qd = (data[off + 4] << 8) | data[off + 5]
    an = (data[off + 6] << 8) | data[off + 7]
    ns = (data[off + 8] << 8) | data[off + 9]
    ar = (data[off + 10] << 8) | data[off + 11]
    # Every question is at least 5 bytes and every record at least 11: the counts must fit.
    return qd >= 1 and _DNS_HEADER + 5 * qd + 11 * (an + ns + ar) <= length


def classify_datagram(data: bytes) -> str:
    """Name the protocol of one UDP datagram: "quic", "dns" or "unknown"."""
    if _is_quic_long_header(data):
        return "quic"
    if len(data) >= _DNS_MIN_QUERY and _dns_header_ok(data, 0, len(data)):
        return "dns"
    return "unknown"


def _is_quic_long_header(data: bytes) -> bool:
    if len(data) < 7 or data[0] & 0xC0 != 0xC0:
        return False
    version = int.from_bytes(data[1:5], "big")
    known = (
        version in (_QUIC_V1, _QUIC_V2)
        or version >> 8 == 0xFF0000  # IETF drafts
        or version & 0x0F0F0F0F == 0x0A0A0A0A  # reserved (greased) versions
    )
    if not known:
        return False
    dcid_len = data[5]
    if dcid_len > 20 or len(data) < 7 + dcid_len:
        return False
    scid_len = data[6 + dcid_len]
    return scid_len <= 20 and len(data) >= 7 + dcid_len + scid_len


def _decided(data: bytes) -> bool:
    return classify(data) is not None


def _peer_done(fd: int) -> bool:
    """True when the peer shut its write side: no more bytes will arrive."""
    p = _poll()
    p.register(fd, _POLL_HUP)
    return bool(p.poll(0))


def peek(
    sock: socket.socket,
    max_bytes: int = 4096,
    timeout: float = 5.0,
    want: Callable[[bytes], bool] | None = None,
) -> bytes:
    """Return up to ``max_bytes`` of the socket's pending input without consuming it.

    Waits for the first bytes, then keeps re-peeking while ``want(data)`` (default: "classify
    has decided") is false, the peer can still send, and the deadline has not passed. Bytes
    already queued keep the socket readable, so waiting for more is polling with short
    sleeps (2 ms doubling to 50 ms). Returns b"" when nothing arrived or the peer closed.
    """
    enough = want or _decided
    fd = sock.fileno()
    deadline = time.monotonic() + timeout
    data = b""
    # The Timeout bounds every wait, including a recv that finds the queue empty after all.
    with gevent.Timeout(timeout, False):
        try:
            wait_read(fd)
            data = sock.recv(max_bytes, socket.MSG_PEEK)
            delay = 0.002
            while data and len(data) < max_bytes and not enough(data):
                if _peer_done(fd):
                    data = sock.recv(max_bytes, socket.MSG_PEEK)
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                gevent.sleep(min(delay, remaining))
                delay = min(delay * 2, 0.05)
                data = sock.recv(max_bytes, socket.MSG_PEEK)
        except ConnectionResetError:
            data = b""
    return data


def detect(sock: socket.socket, max_bytes: int = 4096, timeout: float = 5.0) -> tuple[str, bytes]:
    """Peek and classify: the protocol name (undecided counts as "unknown") and the bytes seen."""
    data = peek(sock, max_bytes, timeout)
    return classify(data) or "unknown", data
