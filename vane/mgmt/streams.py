"""Turn a verb's Stream into §9 stream frames, shared by the unix and HTTP transports.

Each transport bounds its live streams: ``stream_refused`` is the error for one too many,
checked before the verb subscribes to anything.

The transport writes each frame and closes the subscription when its client goes away
(``subscription.close("closed")``); the generator then ends with an end frame. A daemon
shutdown closes the hub, which ends every stream with reason "shutdown".
"""

from __future__ import annotations

import socket
from typing import Any, Iterator

from vane.mgmt.protocol import UNAVAILABLE, MgmtError, stream_data_frame, stream_end_frame
from vane.mgmt.verbs import VERBS, Stream
from vane.observe.hub import Closed, Subscription

__all__ = ["stream_frames", "stream_refused", "watch_eof"]

POLL_SECS = 1.0


def stream_refused(verb: str, live: int, limit: int) -> MgmtError | None:
    """Unavailable when ``verb`` starts a stream and ``live`` streams already run (``limit``)."""
    spec = VERBS.get(verb)
    if spec is None or not spec.stream or live < limit:
        return None
    return MgmtError(UNAVAILABLE, f"too many live streams (at most {limit}); end one (e.g. a vane tail) and retry")


def stream_frames(
    stream: Stream, request_id: Any, poll: float = POLL_SECS, heartbeat: float | None = None
) -> Iterator[dict | None]:
    """Data frames (backlog first, then live; overflow as ``{"dropped": N}``), then one end frame.

    With ``heartbeat``, yields ``None`` after that many idle seconds so the transport can
    prove it is alive (HTTP writes an empty line; NDJSON readers skip it).
    """
    seq = 0
    idle = 0.0
    sub = stream.subscription
    try:
        for item in stream.backlog:
            seq += 1
            yield stream_data_frame(request_id, seq, item)
        while True:
            try:
                item = sub.get(timeout=poll)
            except Closed as c:
                yield stream_end_frame(request_id, c.reason)
                return
            if item is not None:
                idle = 0.0
                seq += 1
                yield stream_data_frame(request_id, seq, item)
            elif heartbeat is not None:
                idle += poll
                if idle >= heartbeat:
                    idle = 0.0
                    yield None
    finally:
        sub.close()


def watch_eof(sock: socket.socket, sub: Subscription) -> None:
    """Cancel a stream when its client disconnects; input during a stream is discarded."""
    try:
        while not sub.closed:
            try:
                if not sock.recv(4096):
                    break
            except TimeoutError:
                continue
    except OSError:
        pass
    sub.close("closed")
