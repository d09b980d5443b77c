"""Bounded reads of the files a config names: regular files only, never more than a limit.

A config path may name anything: a FIFO (opening it blocks), ``/dev/zero`` (reading it never
ends), a directory, a dangling symbolic link. ``read_regular`` checks the kind with ``stat``
before opening, opens without blocking, checks again on the open descriptor (the path may
have been swapped in between) and reads at most ``limit`` bytes; every refusal is a
``FileRefused`` (an ``OSError``) whose ``strerror`` says why in an operator's words.
"""

from __future__ import annotations

import errno
import os
import stat

MAX_CERT_BYTES = 1024 * 1024          # a PEM certificate chain or key
MAX_WASM_BYTES = 64 * 1024 * 1024     # a WASM plugin module

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class FileRefused(OSError):
    """The path is not a regular file, or the file is over the size limit."""

    def __init__(self, path: str, reason: str, code: int = errno.EINVAL) -> None:
        super().__init__(code, reason, path)


def kind_of(mode: int) -> str:
    """"a directory", "a FIFO", … for a non-regular ``st_mode``."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def check_regular(path: str) -> os.stat_result:
    """``stat`` of a regular file (symbolic links followed); FileRefused or OSError otherwise."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise FileRefused(path, f"dangling symbolic link (to {os.readlink(path)!r})", errno.ENOENT) from None
        raise
    if not stat.S_ISREG(st.st_mode):
        raise FileRefused(path, f"not a regular file ({kind_of(st.st_mode)})")
    return st


def read_regular(path: str, limit: int) -> bytes:
    """The whole content of the regular file ``path``, at most ``limit`` bytes.

    Raises FileRefused (not a regular file, over the limit) or the OSError of the open/read.
    """
    check_regular(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(path, f"not a regular file ({kind_of(st.st_mode)})")
        if st.st_size > limit:
            raise FileRefused(path, f"file is {st.st_size} bytes, over the {limit} limit", errno.EFBIG)
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:  # the file grew while it was read
            raise FileRefused(path, f"file is over the {limit} byte limit", errno.EFBIG)
        return b"".join(chunks)
    finally:
        os.close(fd)


def describe_os_error(exc: OSError) -> str:
    """The reason of an OSError without Python's decoration ("[Errno 13] ...")."""
    return exc.strerror or str(exc)
