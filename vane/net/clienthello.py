"""TLS ClientHello parser for the L4 ``tls.*`` keys: SNI, ALPN, versions (DESIGN.md §3, §5).

It works on peeked bytes, so nothing is decrypted or consumed. Every length field is checked
against its container before use; anything inconsistent raises ``ClientHelloError``. A
handshake message fragmented over several records is reassembled, up to a 64 KiB hard cap on
the bytes it may span.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_RECORD = 16384  # largest plaintext record body (RFC 8446 §5.1)
MAX_HELLO_BYTES = 65536  # hard cap on the record bytes a ClientHello may span
_RECORD_HEADER = 5
_HANDSHAKE = 22
_CLIENT_HELLO = 1
_EXT_SNI = 0
_EXT_ALPN = 16
_EXT_SUPPORTED_VERSIONS = 43
_HOSTNAME = re.compile(rb"[!-~]+")

_VERSION_NAMES = {
    0x0304: "TLSv1.3",
    0x0303: "TLSv1.2",
    0x0302: "TLSv1.1",
    0x0301: "TLSv1",
    0x0300: "SSLv3",
}


class ClientHelloError(ValueError):
    """The bytes are not a well-formed TLS ClientHello."""


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What a client offered. ``supported_versions`` leaves out GREASE values (RFC 8701)."""

    sni: str | None
    alpn: tuple[str, ...]
    legacy_version: int
    supported_versions: tuple[int, ...]
    cipher_suites_count: int

    @property
    def version_str(self) -> str:
        """The highest version offered, named as OpenSSL names it ("TLSv1.3", "TLSv1.2", ...)."""
        best = max(self.supported_versions) if self.supported_versions else self.legacy_version
        return _VERSION_NAMES.get(best, f"0x{best:04x}")


def _scan(data: bytes) -> tuple[int, bytes | None]:
    """Walk the records: (bytes needed, the handshake message once complete, else None)."""
    n = len(data)
    pos = 0
    parts: list[bytes] = []
    have = 0
    msg_len = -1
    while True:
        if pos + _RECORD_HEADER > n:
            # At least the next header plus whatever of the message is still missing.
            need = pos + _RECORD_HEADER + max(0, msg_len - have)
            if need > MAX_HELLO_BYTES:
                raise ClientHelloError("ClientHello larger than the cap")
            return need, None
        if data[pos] != _HANDSHAKE:
            raise ClientHelloError("not a handshake record")
        if data[pos + 1] != 3:
            raise ClientHelloError("bad record version")
        rlen = (data[pos + 3] << 8) | data[pos + 4]
        if rlen == 0 or rlen > MAX_RECORD:
            raise ClientHelloError("bad record length")
        start = pos + _RECORD_HEADER
        end = start + rlen
        if end > MAX_HELLO_BYTES:
            raise ClientHelloError("ClientHello larger than the cap")
        if end > n:
            return end, None
        parts.append(data[start:end])
        have += rlen
        if msg_len < 0 and have >= 4:
            head = parts[0] if len(parts[0]) >= 4 else b"".join(parts)
            if head[0] != _CLIENT_HELLO:
                raise ClientHelloError("not a ClientHello")
            msg_len = 4 + ((head[1] << 16) | (head[2] << 8) | head[3])
            if msg_len > MAX_HELLO_BYTES:
                raise ClientHelloError("ClientHello larger than the cap")
        if msg_len >= 0 and have >= msg_len:
            message = parts[0] if len(parts) == 1 else b"".join(parts)
            return end, message[:msg_len]
        pos = end


def needed_bytes(data: bytes) -> int:
    """How many bytes from the start of the stream the ClientHello needs, as far as known.

    Grows as headers arrive (record header, then record length, then further records for a
    fragmented message). For malformed input it returns ``len(data)``: waiting cannot help.
    """
    try:
        return _scan(data)[0]
    except ClientHelloError:
        return len(data)


def complete(data: bytes) -> bool:
    """True once the bytes hold the whole ClientHello or can never become one (a peek ``want``)."""
    return len(data) >= needed_bytes(data)


def parse_client_hello(data: bytes) -> ClientHello | None:
    """Parse the ClientHello at the start of ``data``; None while it is incomplete."""
    message = _scan(data)[1]
    if message is None:
        return None
    return _parse_body(message, 4, len(message))


def _u16(b: bytes, p: int, end: int) -> int:
    if p + 2 > end:
        raise ClientHelloError("truncated length field")
    return (b[p] << 8) | b[p + 1]


def _parse_body(b: bytes, p: int, end: int) -> ClientHello:
    if p + 35 > end:
        raise ClientHelloError("ClientHello too short")
    legacy_version = (b[p] << 8) | b[p + 1]
    p += 34  # version and random
    sid_len = b[p]
    p += 1 + sid_len
    if sid_len > 32 or p > end:
        raise ClientHelloError("bad session id")
    cs_len = _u16(b, p, end)
    p += 2 + cs_len
    if cs_len < 2 or cs_len & 1 or p > end:
        raise ClientHelloError("bad cipher suites")
    if p >= end:
        raise ClientHelloError("missing compression methods")
    comp_len = b[p]
    p += 1 + comp_len
    if comp_len < 1 or p > end:
        raise ClientHelloError("bad compression methods")
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] = ()
    if p == end:  # no extensions (pre-TLS 1.2 clients)
        return ClientHello(sni, alpn, legacy_version, versions, cs_len // 2)
    ext_len = _u16(b, p, end)
    p += 2
    if p + ext_len != end:
        raise ClientHelloError("extensions length mismatch")
    seen: set[int] = set()
    while p < end:
        etype = _u16(b, p, end)
        elen = _u16(b, p + 2, end)
        p += 4
        e_end = p + elen
        if e_end > end:
            raise ClientHelloError("extension overruns the message")
        if etype in seen:
            raise ClientHelloError(f"duplicate extension {etype}")
        seen.add(etype)
        if etype == _EXT_SNI:
            sni = _parse_sni(b, p, e_end)
        elif etype == _EXT_ALPN:
            alpn = _parse_alpn(b, p, e_end)
        elif etype == _EXT_SUPPORTED_VERSIONS:
            versions = _parse_versions(b, p, e_end)
        p = e_end
    return ClientHello(sni, alpn, legacy_version, versions, cs_len // 2)


def _parse_sni(b: bytes, p: int, end: int) -> str | None:
    if p == end:  # a server's empty echo; tolerated
        return None
    list_len = _u16(b, p, end)
    p += 2
    if list_len == 0 or p + list_len != end:
        raise ClientHelloError("bad server_name list")
    name: str | None = None
    while p < end:
        if p + 3 > end:
            raise ClientHelloError("truncated server_name entry")
        name_type = b[p]
        nlen = _u16(b, p + 1, end)
        p += 3
        if nlen == 0 or p + nlen > end:
            raise ClientHelloError("bad server_name length")
        if name_type == 0 and name is None:
            raw = b[p : p + nlen]
            if _HOSTNAME.fullmatch(raw) is None:
                raise ClientHelloError("server_name is not printable ASCII")
            name = raw.decode("ascii").lower()
        p += nlen
    return name


def _parse_alpn(b: bytes, p: int, end: int) -> tuple[str, ...]:
    list_len = _u16(b, p, end)
    p += 2
    if list_len < 2 or p + list_len != end:
        raise ClientHelloError("bad ALPN list")
    protocols: list[str] = []
    while p < end:
        plen = b[p]
        p += 1
        if plen == 0 or p + plen > end:
            raise ClientHelloError("bad ALPN protocol length")
        protocols.append(b[p : p + plen].decode("latin-1"))
        p += plen
    return tuple(protocols)


def _parse_versions(b: bytes, p: int, end: int) -> tuple[int, ...]:
    if p >= end:
        raise ClientHelloError("empty supported_versions")
    vlen = b[p]
    p += 1
    if vlen < 2 or vlen & 1 or p + vlen != end:
        raise ClientHelloError("bad supported_versions")
    versions = []
    for i in range(p, end, 2):
        v = (b[i] << 8) | b[i + 1]
        if v & 0x0F0F != 0x0A0A or b[i] != b[i + 1]:  # skip GREASE
            versions.append(v)
    return tuple(versions)
