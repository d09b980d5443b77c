"""Bounded publish/subscribe for live streams (DESIGN.md §9: tail_flow, tail_log).

A publisher never blocks and never grows memory without bound: each subscriber owns a
queue of at most ``maxsize`` items; when it is full, further items are dropped and counted,
and the reader later sees one ``{"dropped": N}`` item in their place, in order.
Greenlet-safe (the daemon runs in one gevent hub); not meant for real OS threads.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterator

from gevent.event import Event

__all__ = ["Closed", "Hub", "Subscription"]


class Closed(Exception):
    """The subscription was closed; ``reason`` says why ("closed", "shutdown", ...)."""

    def __init__(self, reason: str = "closed") -> None:
        super().__init__(reason)
        self.reason = reason


class _Dropped:
    """Placeholder in a queue for a run of dropped items."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


class Subscription:
    """One reader's bounded queue. Iterate it, or call ``get(timeout)``."""

    def __init__(self, hub: Hub | None, maxsize: int = 1000) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self._hub = hub
        self._maxsize = maxsize
        self._queue: deque[Any] = deque()
        self._ready = Event()
        self.dropped = 0          # total items dropped for this reader
        self.closed_reason: str | None = None

    # publisher side -------------------------------------------------------
    def _offer(self, item: Any) -> None:
        if self.closed_reason is not None:
            return
        q = self._queue
        if len(q) < self._maxsize:
            q.append(item)
        else:
            # Full: count the loss; one marker (the only slot past maxsize) keeps the gap in order.
            self.dropped += 1
            last = q[-1]
            if type(last) is not _Dropped:
                last = _Dropped()
                q.append(last)
            last.count += 1
        self._ready.set()

    # reader side -----------------------------------------------------------
    def __len__(self) -> int:
        return len(self._queue)

    @property
    def closed(self) -> bool:
        return self.closed_reason is not None

    def get(self, timeout: float | None = None) -> Any:
        """Next item (or ``{"dropped": N}``); ``None`` on timeout; raises Closed once closed."""
        while True:
            if self._queue:
                item = self._queue.popleft()
                if type(item) is _Dropped:
                    return {"dropped": item.count}
                return item
            if self.closed_reason is not None:
                raise Closed(self.closed_reason)
            self._ready.clear()
            if not self._ready.wait(timeout):
                return None

    def iter(self, timeout: float | None = None) -> Iterator[Any]:
        """Yield items until closed; yields ``None`` whenever ``timeout`` passes without one."""
        while True:
            try:
                yield self.get(timeout)
            except Closed:
                return

    def __iter__(self) -> Iterator[Any]:
        for item in self.iter(None):
            if item is not None:
                yield item

    def close(self, reason: str = "closed", drain: bool = False) -> None:
        """Stop receiving; a blocked reader wakes up. Queued items are discarded unless
        ``drain``, in which case the reader gets them before Closed."""
        if self.closed_reason is not None:
            return
        self.closed_reason = reason
        if not drain:
            self._queue.clear()
        if self._hub is not None:
            self._hub._remove(self)
        self._ready.set()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Hub:
    """Fan items out to any number of bounded subscriptions. ``on_readers(True)`` is called
    when the first reader subscribes and ``on_readers(False)`` when the last one leaves (a
    master then has its workers forward what they publish)."""

    def __init__(self, max_subscribers: int = 64) -> None:
        self._subs: list[Subscription] = []
        self.max_subscribers = max_subscribers
        self.on_readers: Callable[[bool], None] | None = None

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def publish(self, item: Any) -> None:
        """Deliver to every subscriber; O(subscribers), never blocks."""
        for sub in self._subs:
            sub._offer(item)

    def subscribe(self, maxsize: int = 1000) -> Subscription:
        """A new subscription; raises OverflowError past ``max_subscribers``."""
        if len(self._subs) >= self.max_subscribers:
            raise OverflowError(f"too many subscribers (max {self.max_subscribers})")
        sub = Subscription(self, maxsize)
        # Copy-on-write so publish() can iterate without a lock.
        self._subs = self._subs + [sub]
        if len(self._subs) == 1 and self.on_readers is not None:
            self.on_readers(True)
        return sub

    def close(self, reason: str = "shutdown") -> None:
        """Close every subscription; readers get what is queued, then Closed(reason)."""
        for sub in list(self._subs):
            sub.close(reason, drain=True)

    def _remove(self, sub: Subscription) -> None:
        had = bool(self._subs)
        self._subs = [s for s in self._subs if s is not sub]
        if had and not self._subs and self.on_readers is not None:
            self.on_readers(False)
