"""Reused greenlets for the short jobs of HTTP/2 streams (a request's handler, a scheduled
write).

A fresh greenlet costs more than its switch: on Python 3.11 each one maps its own frame
stack on first use and unmaps it when it ends, two system calls and new pages per request.
``spawn(fn, *args)`` runs ``fn`` in a parked worker greenlet when one is idle (else in a new
one) after the greenlets already runnable; once done, a worker parks again, up to ``KEEP``
idle workers in the process. A job's exception is logged, never lost; the worker goes on.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from gevent import get_hub, getcurrent
from greenlet import greenlet

__all__ = ["spawn", "KEEP"]

log = logging.getLogger("vane.net.h2")

KEEP = 256
_idle: list[Any] = []


def spawn(fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn(*args)`` in a worker greenlet, soon (see module doc)."""
    hub = get_hub()
    while _idle:
        worker = _idle.pop()
        if worker.parent is hub:     # parked under this hub (a new hub starts afresh)
            break
    else:
        worker = greenlet(_work, parent=hub)
    hub.loop.run_callback(worker.switch, fn, args)


def _work(fn: Callable[..., Any], args: tuple) -> None:
    hub = get_hub()
    while True:
        try:
            fn(*args)
        except Exception:
            log.exception("h2 worker job %r failed", fn)
        fn = args = None    # type: ignore[assignment]  # hold nothing while parked
        if len(_idle) >= KEEP:
            return
        _idle.append(getcurrent())
        fn, args = hub.switch()
