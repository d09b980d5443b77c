"""WebSocket frames for the test clients (RFC 6455 §5.2): masked client frames out, unmasked
server frames in."""

from __future__ import annotations

import os
import struct


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 §5.2)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    mask = os.urandom(4)
    key = (mask * (n // 4 + 1))[:n]
    return head + mask + (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def server_frame(buf: bytearray) -> tuple[int, bytes] | None:
    """One unmasked server frame taken off the front of ``buf``, or None while incomplete."""
    if len(buf) < 2:
        return None
    opcode, n, off = buf[0] & 0x0F, buf[1] & 0x7F, 2
    if n == 126:
        if len(buf) < 4:
            return None
        n, off = struct.unpack("!H", buf[2:4])[0], 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n, off = struct.unpack("!Q", buf[2:10])[0], 10
    if len(buf) < off + n:
        return None
    payload = bytes(buf[off:off + n])
    del buf[:off + n]
    return opcode, payload
