"""Kernel pipes for ``os.splice``, shared by everything that moves bytes socket to socket
(the L4 relay, a proxied HTTP/1 body): a small process-wide pool of empty pipes, so a
connection holds a pipe only while bytes are in flight."""

from __future__ import annotations

import fcntl
import os

__all__ = ["PIPE_SIZE", "PIPE_POOL_KEEP", "SPLICE_FLAGS", "PipePool", "pipes"]

PIPE_SIZE = 262144  # requested pipe capacity; the kernel default (64 KiB) when not allowed
PIPE_POOL_KEEP = 64  # empty pipes kept for reuse
SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK


class PipePool:
    """Empty pipes for splice, reused across connections (LIFO, at most ``keep`` kept).

    A pipe is ``(read fd, write fd, capacity in bytes)``. Only an empty pipe goes back
    (``put``); one with bytes stuck inside is closed (``discard``)."""

    __slots__ = ("free", "size", "keep")

    def __init__(self, size: int, keep: int) -> None:
        self.free: list[tuple[int, int, int]] = []
        self.size = size
        self.keep = keep

    def get(self) -> tuple[int, int, int]:
        """An empty pipe; ``OSError`` when out of file descriptors."""
        if self.free:
            return self.free.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            capacity = fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, self.size)
        except OSError:  # over the per-user pipe quota: the default capacity still works
            capacity = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
        return r, w, capacity

    def put(self, pipe: tuple[int, int, int]) -> None:
        """Return an empty pipe."""
        if len(self.free) < self.keep:
            self.free.append(pipe)
        else:
            self.discard(pipe)

    @staticmethod
    def discard(pipe: tuple[int, int, int]) -> None:
        """Close a pipe (one that may still hold bytes)."""
        os.close(pipe[0])
        os.close(pipe[1])


pipes = PipePool(PIPE_SIZE, PIPE_POOL_KEEP)
