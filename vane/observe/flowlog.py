"""Flow log: the trajectory of every connection/request through the flow graph (DESIGN.md §9).

The engine calls ``FlowLog.record(entry)`` once per finished walk. Recording is cheap: an
append to a ring buffer, a fan-out to live subscribers (``tail_flow``) and, when a file is
configured, a non-blocking put on a bounded queue drained by a writer greenlet that writes
NDJSON from the hub's thread pool, so disk latency never stalls a connection. When the disk
falls behind, entries are dropped and counted (``file_dropped``).

Entry shape (produced by the engine)::

    {"ts": 1700000000.1, "conn": "<uuid>", "listener": "tcp 0.0.0.0:8080", "rule": "blog",
     "layer": "l4"|"l7", "steps": [{"node": "/proxy", "plugin": "proxy", "branch": null, "ms": 0.2}],
     "outcome": "finished"|"upgrade"|"error"|"timeout", "status": 200,
     "method": "GET", "host": "example.com", "path": "/", "bytes_in": 0, "bytes_out": 0,
     "ms": 1.5, "errors": [], "missing": []}
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from typing import Any, Callable

import gevent
from gevent.queue import Full, Queue

from vane.engine.trajectory import thaw
from vane.observe.hub import Hub, Subscription

__all__ = ["FlowLog", "L4", "L7", "LEVELS", "as_dict"]

LEVELS = ("trajectory", "debug")

log = logging.getLogger("vane.observe.flowlog")


def l7_entry(frozen: tuple, ts: float, conn_id: str, seq: int, listener: str, status: int, method: str,
             host: str, path: str, version: str, peer: tuple, bytes_in: int, bytes_out: int, outcome: str,
             seconds: float) -> dict:
    """An HTTP request's entry (``frozen``: its ``Trajectory.freeze()``)."""
    entry = thaw(frozen)
    entry.update({"ts": ts, "conn": conn_id, "request": f"{conn_id}/{seq}", "listener": listener,
                  "layer": "l7", "status": status,
                  "method": method, "host": host, "path": path, "version": version,
                  "remote": f"{peer[0]}:{peer[1]}", "bytes_in": bytes_in, "bytes_out": bytes_out,
                  "outcome": outcome, "ms": round(seconds * 1000.0, 3)})
    return entry


def l4_entry(frozen: tuple, ts: float, conn_id: str, listener: str, outcome: str, peer: tuple, bytes_in: int,
             bytes_out: int, seconds: float) -> dict:
    """A connection's entry, written when it closes."""
    entry = thaw(frozen)
    entry.update({"ts": ts, "conn": conn_id, "listener": listener, "layer": "l4", "outcome": outcome,
                  "status": None, "remote": f"{peer[0]}:{peer[1]}", "bytes_in": bytes_in,
                  "bytes_out": bytes_out, "ms": round(seconds * 1000.0, 3)})
    return entry


# A walk's entry is kept as ``(ts, kind, values)``, its dict built by ``_BUILDERS[kind](*values)``
# only when read: most entries never are (the ring keeps 10,000 and nobody tails), and building
# and freeing a dict per request, with one per step, would be the flow log's whole cost. The
# values are strings, numbers and tuples of them: the garbage collector stops tracking such a
# tuple after it has survived a few collections, so kept entries are not a graph it scans.
L7, L4 = "l7", "l4"
_BUILDERS: dict[str, Callable[..., dict]] = {L7: l7_entry, L4: l4_entry}


def as_dict(entry: Any) -> dict:
    return _BUILDERS[entry[1]](*entry[2]) if entry.__class__ is tuple else entry


def _ts(entry: Any, default: float) -> float:
    return entry[0] if entry.__class__ is tuple else entry.get("ts", default)


class FlowLog:
    """Ring buffer + live fan-out + optional NDJSON file of flow trajectories."""

    def __init__(
        self,
        capacity: int = 10000,
        max_age: float = 60.0,
        file_path: str | None = None,
        clock: Callable[[], float] = time.time,
        file_queue: int = 10000,
        level: str = "trajectory",
    ) -> None:
        self._ring: deque[dict] = deque(maxlen=capacity)
        self.max_age = max_age
        self._clock = clock
        self.hub = Hub()
        self.recorded = 0
        self.file_path = file_path
        self.file_dropped = 0
        self.level = level
        self._file_queue: Queue | None = None
        self._writer: gevent.Greenlet | None = None
        if file_path:
            self._file_queue = Queue(maxsize=file_queue)
            self._writer = gevent.spawn(self._write_loop, file_path)

    # level -----------------------------------------------------------------
    @property
    def level(self) -> str:
        """"trajectory" (one entry per walk) or "debug" (the engine also logs every step)."""
        return self._level

    @level.setter
    def level(self, value: str) -> None:
        if value not in LEVELS:
            raise ValueError(f"flow log level must be one of {', '.join(LEVELS)}")
        self._level = value

    @property
    def debug(self) -> bool:
        return self._level == "debug"

    # hot path ----------------------------------------------------------------
    def record(self, entry: dict | tuple) -> None:
        """Keep, publish and (maybe) persist one entry: a dict, or a walk's ``(ts, kind,
        values)`` (``L7``/``L4``). Never blocks."""
        self.recorded += 1
        ring = self._ring
        ring.append(entry)
        if len(ring) > 64 and self.recorded & 63 == 0:
            self._expire()
        if self.hub._subs:
            self.hub.publish(as_dict(entry))
        if self._file_queue is not None:
            try:
                self._file_queue.put_nowait(entry)
            except Full:
                self.file_dropped += 1

    # readers -------------------------------------------------------------------
    def subscribe(self, maxsize: int = 1000) -> Subscription:
        """A live subscription; overflow shows up as ``{"dropped": N}`` items."""
        return self.hub.subscribe(maxsize)

    @property
    def subscribers(self) -> int:
        return self.hub.subscribers

    def recent(self, n: int = 100) -> list[dict]:
        """The last ``n`` entries younger than ``max_age``, oldest first."""
        self._expire()
        if n <= 0:
            return []
        ring = self._ring
        start = max(0, len(ring) - n)
        return [as_dict(ring[i]) for i in range(start, len(ring))]

    def __len__(self) -> int:
        self._expire()
        return len(self._ring)

    def stats(self) -> dict:
        return {
            "level": self._level,
            "recorded": self.recorded,
            "buffered": len(self),
            "subscribers": self.hub.subscribers,
            "file": self.file_path,
            "file_dropped": self.file_dropped,
        }

    def _expire(self) -> None:
        ring = self._ring
        if not ring:
            return
        cutoff = self._clock() - self.max_age
        while ring and _ts(ring[0], cutoff) < cutoff:
            ring.popleft()

    # lifecycle -----------------------------------------------------------------
    def close(self, timeout: float = 2.0) -> None:
        """Close live subscriptions and flush the file writer (bounded by ``timeout``)."""
        self.hub.close("shutdown")
        if self._writer is not None and self._file_queue is not None:
            try:
                self._file_queue.put(StopIteration, timeout=timeout)
                self._writer.join(timeout)
            except Full:
                pass
            self._writer.kill(block=False)
            self._writer = None

    def _write_loop(self, path: str) -> None:
        queue = self._file_queue
        assert queue is not None
        pool = gevent.get_hub().threadpool
        out = _NdjsonFile(path)
        try:
            while True:
                item = queue.get()
                batch = []
                while item is not StopIteration:
                    batch.append(json.dumps(as_dict(item), separators=(",", ":"), default=str))
                    if len(batch) >= 512 or queue.empty():
                        break
                    item = queue.get_nowait()
                if batch:
                    pool.apply(out.write, ("\n".join(batch) + "\n",))
                if item is StopIteration:
                    return
        except Exception:
            log.exception("flow log writer stopped", extra={"file": path})
        finally:
            out.close()


class _NdjsonFile:
    """An append-only file that follows logrotate: reopened when the path's inode changes.

    Runs in the hub's thread pool, never on the event loop.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fh: Any = None
        self._ino: int | None = None

    def write(self, data: str) -> None:
        try:
            ino: int | None = os.stat(self.path).st_ino
        except FileNotFoundError:
            ino = None
        if self._fh is None or ino != self._ino:
            self.close()
            self._fh = open(self.path, "a", encoding="utf-8")
            self._ino = os.fstat(self._fh.fileno()).st_ino
        self._fh.write(data)
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
