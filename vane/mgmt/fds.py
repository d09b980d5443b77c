"""File descriptors for management when the process runs out of them.

``FdReserve`` keeps a few descriptors open on ``/dev/null``. When a management accept fails
with EMFILE/ENFILE, the accept loop closes one of them and accepts again at once (the
connection is still queued, and nothing else runs in between), so an operator's ``vane``
command gets an answer while the data plane is starved. The reserve is refilled whenever a
management connection closes.

``raise_nofile_limit()`` lifts the soft RLIMIT_NOFILE to the hard limit at daemon start.
"""

from __future__ import annotations

import errno
import logging
import os
import resource

from gevent.monkey import get_original

__all__ = ["FD_ERRORS", "RESERVE_FDS", "FdReserve", "raise_nofile_limit"]

log = logging.getLogger("vane.mgmt")

FD_ERRORS = frozenset({errno.EMFILE, errno.ENFILE})
RESERVE_FDS = 4
NOFILE_CEILING = 1 << 20  # never ask for more than this, whatever the hard limit says

# The plain close(2): gevent's os.close defers closing anything but a regular file to the
# next loop iteration, and the descriptor must be free before the accept that follows.
# The loop never watches these descriptors, so closing them at once is safe.
_close_now = get_original("os", "close")


class FdReserve:
    """Owns up to ``size`` spare descriptors (``/dev/null``) that management may spend."""

    def __init__(self, size: int = RESERVE_FDS) -> None:
        self.size = size
        self._fds: list[int] = []
        self._closed = False
        self.refill()

    def __len__(self) -> int:
        return len(self._fds)

    def release(self) -> bool:
        """Close one spare descriptor so the next ``accept`` can have it; False when none is left."""
        if not self._fds:
            return False
        _close_now(self._fds.pop())
        return True

    def refill(self) -> None:
        """Open spare descriptors again up to ``size``, as far as the process has any."""
        while len(self._fds) < self.size and not self._closed:
            try:
                self._fds.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                return

    def close(self) -> None:
        """Give the descriptors back for good (the servers are stopping)."""
        self._closed = True
        while self._fds:
            _close_now(self._fds.pop())


def raise_nofile_limit(ceiling: int = NOFILE_CEILING) -> tuple[int, int]:
    """Raise the soft limit on open files to the hard limit (at most ``ceiling``); returns
    ``(old, new)`` soft limits. Unprivileged and safe: the hard limit is not touched."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard if hard != resource.RLIM_INFINITY else ceiling, ceiling)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as e:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, e)
            return soft, soft
        log.info("open-files limit raised from %d to %d", soft, target)
        return soft, target
    return soft, soft
