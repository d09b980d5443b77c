"""Structured logging for vaned: stderr (journald), optional file, live tail (DESIGN.md §7-§9).

``setup_logging`` installs three handlers on the root logger:

* stderr, human text ``LEVEL logger: message key=value`` (journald adds the time) or JSON lines;
* an optional file (``VANE_LOG_FILE``), same format with a timestamp, reopened when logrotate
  moves it;
* a handler publishing each record as a dict to a ``Hub`` for the ``tail_log`` verb.

Structured fields come from ``extra={"conn": ..., "rule": ..., "node": ...}`` and appear in
every format. ``RateLimitedLogger`` logs a key at most once per interval (security-floor
breaches, §8) with a bounded key table.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
from collections import OrderedDict
from typing import Any, Callable

from vane.observe.hub import Hub

__all__ = [
    "HubHandler",
    "JsonFormatter",
    "RateLimitedLogger",
    "TextFormatter",
    "log_once_per_second",
    "record_fields",
    "setup_logging",
]

_STD_ATTRS = frozenset(logging.LogRecord("x", 0, "x", 0, "x", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_MARK = "_vane_handler"


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields a record carries (everything passed via ``extra``)."""
    return {k: v for k, v in record.__dict__.items() if k not in _STD_ATTRS and not k.startswith("_")}


def _text_value(value: Any) -> str:
    s = value if isinstance(value, str) else json.dumps(value, default=str, separators=(",", ":"))
    if s == "" or any(c in s for c in ' "=\n\t'):
        return json.dumps(s)
    return s


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message key=value ...``; with ``timestamps``, an ISO time first."""

    def __init__(self, timestamps: bool = False) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        if self.timestamps:
            parts.append(self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}")
        parts.append(f"{record.levelname} {record.name}: {record.getMessage()}")
        for key, value in record_fields(record).items():
            parts.append(f"{key}={_text_value(value)}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(record_dict(record, self), default=str, separators=(",", ":"))


def record_dict(record: logging.LogRecord, formatter: logging.Formatter | None = None) -> dict[str, Any]:
    """A log record as a plain dict (JSON lines and the ``tail_log`` stream)."""
    out: dict[str, Any] = {
        "ts": round(record.created, 6),
        "level": record.levelname,
        "logger": record.name,
        "message": record.getMessage(),
    }
    out.update(record_fields(record))
    if record.exc_info:
        out["exc"] = (formatter or logging.Formatter()).formatException(record.exc_info)
    return out


class HubHandler(logging.Handler):
    """Publish records as dicts to a Hub (never blocks: the hub drops for slow readers)."""

    def __init__(self, hub: Hub, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.hub = hub

    def emit(self, record: logging.LogRecord) -> None:
        if not self.hub.subscribers:
            return
        try:
            self.hub.publish(record_dict(record, self.formatter))
        except Exception:
            self.handleError(record)


def _formatter(fmt: str, timestamps: bool) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return TextFormatter(timestamps=timestamps)
    raise ValueError(f"log format must be 'text' or 'json', not {fmt!r}")


def setup_logging(
    level: str | int = "info",
    fmt: str = "text",
    file: str | None = None,
    hub: Hub | None = None,
    stream: Any = None,
) -> None:
    """Configure the root logger; calling it again (on restart of logging) replaces our handlers."""
    if isinstance(level, str):
        numeric = logging.getLevelName(level.upper())
        if not isinstance(numeric, int):
            raise ValueError(f"unknown log level {level!r}")
        level = numeric
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _MARK, False):
            root.removeHandler(handler)
            handler.close()
    handlers: list[logging.Handler] = []
    err = logging.StreamHandler(stream if stream is not None else sys.stderr)
    err.setFormatter(_formatter(fmt, timestamps=False))
    handlers.append(err)
    if file:
        fh = logging.handlers.WatchedFileHandler(file, encoding="utf-8")
        fh.setFormatter(_formatter(fmt, timestamps=True))
        handlers.append(fh)
    if hub is not None:
        handlers.append(HubHandler(hub))
    for handler in handlers:
        setattr(handler, _MARK, True)
        root.addHandler(handler)
    root.setLevel(level)


class RateLimitedLogger:
    """Log each key at most once per ``interval``; later lines report how many were suppressed.

    The key table is bounded (``max_keys``): the least recently logged key is evicted first,
    so a flood of distinct client addresses cannot grow memory.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 1.0,
        max_keys: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.max_keys = max_keys
        self._clock = clock
        self._seen: OrderedDict[Any, list] = OrderedDict()  # key -> [last_logged, suppressed]

    def __len__(self) -> int:
        return len(self._seen)

    def log(self, key: Any, level: int, msg: str, *args: Any, extra: dict | None = None) -> bool:
        """Log unless ``key`` was logged less than ``interval`` ago; True when it was logged."""
        now = self._clock()
        slot = self._seen.get(key)
        if slot is not None and now - slot[0] < self.interval:
            slot[1] += 1
            return False
        suppressed = slot[1] if slot is not None else 0
        self._seen[key] = [now, 0]
        self._seen.move_to_end(key)
        while len(self._seen) > self.max_keys:
            self._seen.popitem(last=False)
        if suppressed:
            extra = dict(extra or {}, suppressed=suppressed)
        self.logger.log(level, msg, *args, extra=extra)
        return True


_default_limiter = RateLimitedLogger(logging.getLogger("vane.floor"))


def log_once_per_second(key: Any, level: int, msg: str, *args: Any, extra: dict | None = None) -> bool:
    """Rate-limited logging on the ``vane.floor`` logger, e.g. key=("max_conn_per_ip", ip)."""
    return _default_limiter.log(key, level, msg, *args, extra=extra)
