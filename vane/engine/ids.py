"""UUIDv7 connection ids (RFC 9562): 48-bit unix milliseconds, then random bits.

The random bits come from the OS CSPRNG, read 4000 bytes (400 ids) at a time rather than
one system call per id; a forked child starts with fresh bytes.
"""

from __future__ import annotations

import os
import time

_BLOCK = 4000  # random bytes per read: 10 per id
_VARIANT = "89ab"  # RFC 9562 variant 0b10xx as the first hex digit of the fourth group

_buf = b""
_pos = _BLOCK
_time_ns = time.time_ns


def _forget() -> None:
    global _pos
    _pos = _BLOCK


os.register_at_fork(after_in_child=_forget)


def uuid7() -> str:
    global _buf, _pos
    pos = _pos
    if pos >= _BLOCK:
        _buf = os.urandom(_BLOCK)
        pos = 0
    _pos = pos + 10
    h = ((_time_ns() // 1_000_000 & 0xFFFFFFFFFFFF).to_bytes(6, "big") + _buf[pos:pos + 10]).hex()
    return f"{h[:8]}-{h[8:12]}-7{h[13:16]}-{_VARIANT[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"
