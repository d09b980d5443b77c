"""PROXY protocol v1 (text) and v2 (binary) headers, as HAProxy specifies them (DESIGN.md §6).

The L4 ``proxy`` terminator sends one before the first byte to an upstream that asked for
``proxy_protocol``; ``parse`` reads either version back, and ``read_header`` takes one off
an accepted connection whose listener has ``accept_proxy_protocol``.
"""

from __future__ import annotations

import socket
import struct

import gevent

from .dial import unmapped
from .peek import peek

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX = b"PROXY "
_V1_MAX = 107  # longest v1 line, CRLF included
_V2_HEADER = struct.Struct("!12sBBH")
_V2_ADDR4 = struct.Struct("!4s4sHH")
_V2_ADDR6 = struct.Struct("!16s16sHH")
_V2_PROXY = 0x21  # version 2, command PROXY
_V2_LOCAL = 0x20  # version 2, command LOCAL
_V2_FAMILIES = {("tcp", 4): 0x11, ("udp", 4): 0x12, ("tcp", 6): 0x21, ("udp", 6): 0x22}
_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"

Address = tuple[str, int]


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY protocol header."""


def _packed(host: str) -> tuple[int, bytes]:
    """(4 or 6, packed address) of an IP literal; an IPv4-mapped IPv6 address counts as IPv4."""
    host = host.partition("%")[0]  # drop an IPv6 zone id
    try:
        return 4, socket.inet_pton(socket.AF_INET, host)
    except OSError:
        pass
    try:
        raw = socket.inet_pton(socket.AF_INET6, host)
    except OSError:
        raise ProxyProtocolError(f"not an IP address: {host!r}") from None
    if raw[:12] == _MAPPED_PREFIX:
        return 4, raw[12:]
    return 6, raw


def _check_port(port: int) -> int:
    if not 0 <= port <= 65535:
        raise ProxyProtocolError(f"bad port {port}")
    return port


def header_v1(src: Address, dst: Address) -> bytes:
    """``PROXY TCP4|TCP6 src dst sport dport\\r\\n``; ``PROXY UNKNOWN\\r\\n`` when families differ."""
    sfam, sraw = _packed(src[0])
    dfam, draw = _packed(dst[0])
    if sfam != dfam:
        return b"PROXY UNKNOWN\r\n"
    af = socket.AF_INET if sfam == 4 else socket.AF_INET6
    line = "PROXY TCP%d %s %s %d %d\r\n" % (
        sfam,
        socket.inet_ntop(af, sraw),
        socket.inet_ntop(af, draw),
        _check_port(src[1]),
        _check_port(dst[1]),
    )
    return line.encode("ascii")


def header_v2(src: Address, dst: Address, transport: str = "tcp") -> bytes:
    """Binary v2 header, command PROXY; AF_UNSPEC with no addresses when families differ."""
    if transport not in ("tcp", "udp"):
        raise ProxyProtocolError(f"bad transport {transport!r}")
    sfam, sraw = _packed(src[0])
    dfam, draw = _packed(dst[0])
    if sfam != dfam:
        return _V2_HEADER.pack(V2_SIGNATURE, _V2_PROXY, 0x00, 0)
    body = (_V2_ADDR4 if sfam == 4 else _V2_ADDR6).pack(
        sraw, draw, _check_port(src[1]), _check_port(dst[1])
    )
    return _V2_HEADER.pack(V2_SIGNATURE, _V2_PROXY, _V2_FAMILIES[transport, sfam], len(body)) + body


def parse(data: bytes) -> tuple[int, Address | None, Address | None] | None:
    """Parse a v1 or v2 header at the start of ``data``: (header length, source, destination).

    None while incomplete; addresses are None for UNKNOWN, LOCAL and non-IP families.
    Raises ``ProxyProtocolError`` for anything else.
    """
    if data[:1] == b"\r":
        if len(data) < 16:
            if V2_SIGNATURE.startswith(data[:12]):
                return None
            raise ProxyProtocolError("not a PROXY header")
        return _parse_v2(data)
    if len(data) < len(_V1_PREFIX):
        if _V1_PREFIX.startswith(data):
            return None
        raise ProxyProtocolError("not a PROXY header")
    if not data.startswith(_V1_PREFIX):
        raise ProxyProtocolError("not a PROXY header")
    return _parse_v1(data)


def _parse_v1(data: bytes) -> tuple[int, Address | None, Address | None] | None:
    lf = data.find(b"\n", 0, _V1_MAX)
    if lf < 0:
        if len(data) < _V1_MAX:
            return None
        raise ProxyProtocolError("v1 header too long")
    if data[lf - 1] != 0x0D:
        raise ProxyProtocolError("v1 header must end with CRLF")
    end = lf - 1
    fields = data[6:end].split(b" ")
    if fields[0] == b"UNKNOWN":
        return end + 2, None, None
    if len(fields) != 5 or fields[0] not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError("malformed v1 header")
    af = socket.AF_INET if fields[0] == b"TCP4" else socket.AF_INET6
    try:
        src_host = socket.inet_ntop(af, socket.inet_pton(af, fields[1].decode("ascii")))
        dst_host = socket.inet_ntop(af, socket.inet_pton(af, fields[2].decode("ascii")))
    except (OSError, UnicodeDecodeError, ValueError):
        raise ProxyProtocolError("bad v1 address") from None
    return end + 2, (src_host, _v1_port(fields[3])), (dst_host, _v1_port(fields[4]))


def _v1_port(raw: bytes) -> int:
    if not raw.isdigit() or len(raw) > 5 or (len(raw) > 1 and raw[0] == 0x30):
        raise ProxyProtocolError("bad v1 port")
    return _check_port(int(raw))


def _parse_v2(data: bytes) -> tuple[int, Address | None, Address | None] | None:
    sig, ver_cmd, fam, length = _V2_HEADER.unpack_from(data)
    if sig != V2_SIGNATURE:
        raise ProxyProtocolError("bad v2 signature")
    if ver_cmd not in (_V2_PROXY, _V2_LOCAL):
        raise ProxyProtocolError("bad v2 version or command")
    total = 16 + length
    if len(data) < total:
        return None
    if ver_cmd == _V2_LOCAL:
        return total, None, None
    proto = fam >> 4
    if proto == 1:
        addr, af = _V2_ADDR4, socket.AF_INET
    elif proto == 2:
        addr, af = _V2_ADDR6, socket.AF_INET6
    elif proto in (0, 3):  # AF_UNSPEC, AF_UNIX
        return total, None, None
    else:
        raise ProxyProtocolError("bad v2 address family")
    if fam & 0x0F not in (1, 2):
        raise ProxyProtocolError("bad v2 transport")
    if length < addr.size:
        raise ProxyProtocolError("v2 address block too short")
    sraw, draw, sport, dport = addr.unpack_from(data, 16)
    return total, (socket.inet_ntop(af, sraw), sport), (socket.inet_ntop(af, draw), dport)


MAX_HEADER = 4096   # an inbound v2 header (TLVs included) longer than this is refused


def read_header(sock: socket.socket, timeout: float) -> tuple[Address | None, Address | None]:
    """Consume the PROXY header (v1 or v2) a connection starts with, and nothing after it:
    (source, destination), both None for ``LOCAL``/``UNKNOWN``. Raises ``ProxyProtocolError``
    when the connection does not start with a complete, valid header within ``timeout``."""
    def decided(data: bytes) -> bool:
        try:
            return parse(data) is not None
        except ProxyProtocolError:
            return True

    data = peek(sock, MAX_HEADER, timeout, want=decided)
    if not data:
        raise ProxyProtocolError("no PROXY header before the timeout or the end of the connection")
    parsed = parse(data)
    if parsed is None:
        raise ProxyProtocolError("incomplete PROXY header")
    total, src, dst = parsed
    left = total
    with gevent.Timeout(timeout, ProxyProtocolError("PROXY header read timed out")):
        while left:
            chunk = sock.recv(left)     # queued already (it was peeked): never waits in practice
            if not chunk:
                raise ProxyProtocolError("connection closed inside the PROXY header")
            left -= len(chunk)
    return src, dst



def accept_proxied(sock: socket.socket, peer: tuple, trusted: object, timeout: float) -> tuple:
    """The client's address of a connection accepted on a listener with ``accept_proxy_protocol``:
    the source its trusted sender put in the PROXY header (the sender's own address for
    ``LOCAL``, e.g. a load balancer's health check). Raises ``ProxyProtocolError`` for a
    source that is not trusted (it is refused whatever it sends) and for a trusted one whose
    connection does not start with a valid header."""
    if unmapped(peer[0]) not in trusted:      # type: ignore[operator]
        raise ProxyProtocolError("not a trusted source of PROXY headers (accept_proxy_protocol.trusted)")
    src, _dst = read_header(sock, timeout)
    return peer if src is None else (unmapped(src[0]), src[1])
