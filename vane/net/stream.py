"""What vaned's codecs and relays read and write: a plain TCP or unix connection, accepted
or to an upstream (``vane.net.plain.PlainStream``), or a TLS stream (``vane.net.tls.stream.TLSStream``;
gevent's ``SSLSocket`` to a TLS upstream) with the same calls."""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["Stream"]


class Stream(Protocol):
    """A connected byte stream.

    ``recv_into`` blocks cooperatively and returns 0 at EOF; ``sendall`` writes everything;
    ``shutdown_write`` sends the stream's end (close_notify and/or FIN) but keeps reading.
    Blocking calls must tolerate an exception thrown into them (gevent timeouts). Optional:
    ``abort()`` closes without a clean end, and a ``socket`` attribute gives the TCP socket
    underneath (addresses, socket options, a reset on close).
    """

    def recv_into(self, buf: Any) -> int: ...

    def sendall(self, data: bytes | memoryview) -> None: ...

    def settimeout(self, timeout: float | None) -> None: ...

    def shutdown_write(self) -> None: ...

    def close(self) -> None: ...

    def fileno(self) -> int: ...
