"""The access log: one line per HTTP request, in a format operators feed to their tools.

Formats (``VANE_ACCESS_LOG_FORMAT``):

* ``combined`` — the nginx/Apache combined format:
  ``ip - - [01/Dec/2026:22:51:43 +0000] "GET /a?b HTTP/1.1" 200 512 "referer" "user agent"``,
  ``ip`` being ``req.client_ip`` (the peer, or the client behind trusted proxies);
* ``json`` — one object per line (see ``JSON_FIELDS``);
* a template of KV keys, e.g. ``{{conn.ip}} {{req.method}} {{req.uri}} {{log.status}}``:
  every request KV key (``conn.*``, ``tls.*``, ``req.*``, ``res.*``, ``var.*``, ``plugin.*``)
  plus the ``log.*`` keys of ``LOG_KEYS``. The template is parsed once, at start.

Every value that comes from the client is escaped (``"`` ``\\`` and control bytes as
``\\xHH``), so a request can never forge a line or break a field.

Destination (``VANE_ACCESS_LOG``): a file, ``stdout`` (journald under systemd), or off
(the default; then no line is ever formatted). A file is opened at start — an unwritable path
is a start-up error — in append mode, and reopened by ``reopen`` (SIGUSR1, ``vane
reopen-logs``) after logrotate moved it.

Lines are formatted in the request's greenlet (a few microseconds) and appended to an
in-memory buffer; a flusher greenlet writes the buffer from the hub's thread pool every
``VANE_ACCESS_LOG_FLUSH_MS`` or as soon as 64 KiB are pending, and on exit. The buffer is
bounded (``VANE_ACCESS_LOG_BUFFER_BYTES``): past it, while the disk does not keep up,
lines are dropped and counted (``dropped`` in ``vane stats``), never queued without end.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from json.encoder import encode_basestring_ascii as _q  # type: ignore[attr-defined]
from typing import Any, Callable

import gevent
from gevent.event import Event
from gevent.lock import Semaphore

from vane.engine.template import DEFAULT_LIMITS, Limits, Parts, parse, render
from vane.flow.realip import client_ip
from vane.observe.logging import RateLimitedLogger

__all__ = ["FORMATS", "JSON_FIELDS", "LOG_KEYS", "AccessLog", "Formatter", "escape", "make_formatter"]

log = logging.getLogger("vane.access")
write_errors = RateLimitedLogger(log, interval=10.0)

FORMATS = ("combined", "json")
STDOUT = "stdout"
FLUSH_AT = 64 * 1024      # pending bytes that wake the flusher before its interval ends
MAX_FIELD = 8192          # longest client-supplied value written as is (longer: cut, marked)

JSON_FIELDS = ("time", "remote", "remote_port", "client_ip", "method", "host", "uri", "protocol", "status", "bytes",
               "duration_ms", "upstream", "upstream_ms", "rule", "user_agent", "referer", "request_id")
LOG_KEYS = ("log.time", "log.time_local", "log.remote", "log.status", "log.bytes", "log.duration_ms",
            "log.upstream", "log.upstream_ms", "log.rule", "log.request_id", "log.protocol")

Runner = Callable[..., Any]     # run(fn, *args) -> fn(*args), wherever I/O may block
_ESCAPES = {c: f"\\x{c:02X}" for c in (*range(0x20), 0x22, 0x5C, *range(0x7F, 0x100))}


def escape(value: str) -> str:
    """``value`` safe inside a quoted log field: ``"``, ``\\``, control characters and the
    bytes past 126 as ``\\xHH`` (as nginx does), cut at MAX_FIELD characters."""
    if len(value) > MAX_FIELD:
        value = value[:MAX_FIELD] + "..."
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return value
    return value.translate(_ESCAPES)


class _Clock:
    """The two time stamps of a line, formatted once per second."""

    __slots__ = ("second", "local", "iso")

    def __init__(self) -> None:
        self.second = -1
        self.local = ""
        self.iso = ""

    def at(self, now: float) -> None:
        second = int(now)
        if second != self.second:
            self.second = second
            self.local = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(second))
            self.iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def _protocol(version: str) -> str:
    return "HTTP/2.0" if version == "2" else f"HTTP/{version}"


def _uri(req: Any) -> str:
    return f"{req.path}?{req.query}" if req.query else req.path


def _client(rctx: Any, peer_ip: str) -> str:
    """``req.client_ip``: the peer, or the client behind config.json's trusted_proxies."""
    trusted = getattr(rctx.services, "trusted_proxies", None)
    return peer_ip if trusted is None else client_ip(peer_ip, rctx.request.headers, trusted)


class Formatter:
    """Turns one finished request into one line (without the newline)."""

    __slots__ = ("clock",)

    def __init__(self) -> None:
        self.clock = _Clock()

    def format(self, rctx: Any, status: int, sent: int, seconds: float, now: float) -> str:
        raise NotImplementedError


class CombinedFormat(Formatter):
    __slots__ = ()

    def format(self, rctx: Any, status: int, sent: int, seconds: float, now: float) -> str:
        req = rctx.request
        headers = req.headers
        clock = self.clock
        clock.at(now)
        peer = rctx.conn.peer if rctx.conn is not None else ("-", 0)
        referer = headers.get("referer")
        agent = headers.get("user-agent")
        return (f'{_client(rctx, peer[0])} - - [{clock.local}] "{escape(req.method)} {escape(_uri(req))} '
                f'{_protocol(req.version)}" {status} {sent} "{escape(referer) if referer else "-"}" '
                f'"{escape(agent) if agent else "-"}"')


class JsonFormat(Formatter):
    """One JSON object per line, built from pieces (``json.dumps`` of a dict costs three
    times as much): strings through the C string encoder, numbers as they print."""

    __slots__ = ()

    def format(self, rctx: Any, status: int, sent: int, seconds: float, now: float) -> str:
        req = rctx.request
        headers = req.headers
        clock = self.clock
        clock.at(now)
        peer = rctx.conn.peer if rctx.conn is not None else ("", 0)
        upstream = rctx.upstream
        upstream_secs = rctx.upstream_secs
        rule = rctx.rule
        return (f'{{"time":"{clock.iso}.{int(now * 1000) % 1000:03d}Z","remote":{_q(peer[0])},'
                f'"remote_port":{int(peer[1])},"client_ip":{_q(_client(rctx, peer[0]))},'
                f'"method":{_q(req.method)},"host":{_q(req.host)},"uri":{_q(_uri(req)[:MAX_FIELD])},'
                f'"protocol":{_q(_protocol(req.version))},"status":{int(status)},"bytes":{int(sent)},'
                f'"duration_ms":{round(seconds * 1000.0, 3)},'
                f'"upstream":{_q(upstream) if upstream is not None else "null"},'
                f'"upstream_ms":{round(upstream_secs * 1000.0, 3) if upstream_secs is not None else "null"},'
                f'"rule":{_q(rule) if rule is not None else "null"},'
                f'"user_agent":{_q((headers.get("user-agent") or "")[:MAX_FIELD])},'
                f'"referer":{_q((headers.get("referer") or "")[:MAX_FIELD])},'
                f'"request_id":{_q(rctx.request_id)}}}')


class _View:
    """What a template reads: the ``log.*`` keys, then the request's KV, every value escaped."""

    __slots__ = ("fmt", "rctx", "status", "sent", "seconds", "now")

    def __init__(self, fmt: TemplateFormat, rctx: Any, status: int, sent: int, seconds: float, now: float) -> None:
        self.fmt = fmt
        self.rctx = rctx
        self.status = status
        self.sent = sent
        self.seconds = seconds
        self.now = now

    def get(self, key: str) -> str | None:
        if key.startswith("log."):
            return self._log(key)
        try:
            value = self.rctx.kv.get(key)
        except Exception:  # noqa: BLE001 - a lazy key that cannot be computed (e.g. a body past the limit)
            return None
        return escape(value) if value is not None else None

    def _log(self, key: str) -> str | None:
        rctx = self.rctx
        clock = self.fmt.clock
        name = key[4:]
        if name == "status":
            return str(self.status)
        if name == "bytes":
            return str(self.sent)
        if name == "duration_ms":
            return f"{self.seconds * 1000.0:.3f}"
        if name in ("time", "time_local"):
            clock.at(self.now)
            return f"{clock.iso}.{int(self.now * 1000) % 1000:03d}Z" if name == "time" else clock.local
        if name == "remote":
            return rctx.conn.peer[0] if rctx.conn is not None else None
        if name == "upstream":
            return rctx.upstream
        if name == "upstream_ms":
            return f"{rctx.upstream_secs * 1000.0:.3f}" if rctx.upstream_secs is not None else None
        if name == "rule":
            return rctx.rule
        if name == "request_id":
            return rctx.request_id
        if name == "protocol":
            return _protocol(rctx.request.version)
        return None


class TemplateFormat(Formatter):
    __slots__ = ("parts", "limit")

    def __init__(self, parts: Parts, limit: int) -> None:
        super().__init__()
        self.parts = parts
        self.limit = limit

    def format(self, rctx: Any, status: int, sent: int, seconds: float, now: float) -> str:
        return render(self.parts, _View(self, rctx, status, sent, seconds, now), self.limit, None)


def make_formatter(spec: str, limits: Limits | None = None) -> Formatter:
    """The formatter for ``VANE_ACCESS_LOG_FORMAT``: ``combined``, ``json`` or a template
    (parsed here, once; raises TemplateError or ValueError)."""
    if spec == "combined":
        return CombinedFormat()
    if spec == "json":
        return JsonFormat()
    if "{{" not in spec:
        raise ValueError(f"expected combined, json or a template with {{{{key}}}} placeholders, got {spec!r}")
    limits = limits or DEFAULT_LIMITS
    return TemplateFormat(parse(spec, limits), limits.result_size)


class AccessLog:
    """Owns the access log's destination (the file descriptor of a path, or stdout), its
    formatter, the bounded buffer of lines not yet written and the greenlet that writes them."""

    def __init__(self, dest: str, formatter: Formatter, flush_interval: float = 1.0,
                 max_buffer: int = 1 << 20, off_hub: Runner | None = None) -> None:
        self.dest = dest
        self.off_hub = off_hub or _direct    # runs file I/O (the daemon's: in the hub's thread pool)
        self.formatter = formatter
        self.flush_interval = flush_interval
        self.max_buffer = max_buffer
        self.fd: int | None = None
        self.lines = 0
        self.dropped = 0
        self.write_failures = 0
        self.reopened = 0
        self._pending: list[str] = []
        self._pending_bytes = 0
        self._wake = Event()
        self._lock = Semaphore()          # one write or reopen at a time
        self._flusher: gevent.Greenlet | None = None
        self._closed = False

    # -- opening ---------------------------------------------------------------------------------

    def open(self) -> None:
        """Open the destination (append; created 0640 if missing); raises OSError."""
        fd = self._open()
        old, self.fd = self.fd, fd
        if old is not None and old != 1:
            os.close(old)
        self._closed = False

    def check(self) -> None:
        """Raise OSError unless ``open`` would succeed for this process (creates nothing)."""
        if self.dest == STDOUT:
            return
        if os.path.isdir(self.dest):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), self.dest)
        target = self.dest if os.path.exists(self.dest) else os.path.dirname(self.dest)
        mode = os.W_OK if target == self.dest else os.W_OK | os.X_OK
        if not os.access(target, mode):
            code = errno.EACCES if os.path.exists(target) else errno.ENOENT
            raise OSError(code, os.strerror(code), target)

    def _open(self) -> int:
        if self.dest == STDOUT:
            return 1
        return os.open(self.dest, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def reopen(self) -> dict:
        """Write what is pending to the old file, then open the path again (after logrotate
        moved it). Raises OSError when the path cannot be opened; the old file stays in use."""
        with self._lock:
            self._write_pending()
            if self.dest != STDOUT:
                fd = self.off_hub(self._open)
                old, self.fd = self.fd, fd
                if old is not None and old != 1:
                    os.close(old)
            self.reopened += 1
        return {"access_log": self.dest, "reopened": True}

    # -- hot path --------------------------------------------------------------------------------

    def request(self, rctx: Any, status: int, sent: int, seconds: float, now: float) -> None:
        """Format one finished request and buffer its line. Never blocks, never raises."""
        try:
            line = self.formatter.format(rctx, status, sent, seconds, now)
        except Exception:  # noqa: BLE001 - a bad line is dropped and counted, the request is done
            self.dropped += 1
            return
        size = len(line) + 1
        if self._pending_bytes + size > self.max_buffer or self.fd is None:
            self.dropped += 1
            return
        self._pending.append(line)
        self._pending_bytes += size
        self.lines += 1
        if self._flusher is None:
            self._flusher = gevent.spawn(self._flush_loop)
        if self._pending_bytes >= FLUSH_AT:
            self._wake.set()

    # -- writing ---------------------------------------------------------------------------------

    def _flush_loop(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - never let the flusher die: the next round retries
                log.exception("access log flush failed")

    def flush(self) -> None:
        """Write every pending line now (from the hub's thread pool)."""
        if self._pending:
            with self._lock:
                self._write_pending()

    def _write_pending(self) -> None:
        if not self._pending:
            return
        lines, self._pending, self._pending_bytes = self._pending, [], 0
        fd = self.fd
        if fd is None:
            self.dropped += len(lines)
            return
        data = ("\n".join(lines) + "\n").encode("utf-8", "replace")
        try:
            self.off_hub(_write_all, fd, data)
        except OSError as exc:
            self.dropped += len(lines)
            self.write_failures += 1
            write_errors.log(self.dest, logging.ERROR, "access log %s: cannot write: %s (%d lines lost)",
                             self.dest, exc, len(lines), extra={"file": self.dest})

    def close(self) -> None:
        """Write what is pending and close the file (the process is ending)."""
        self._closed = True
        try:
            with self._lock:
                self._write_pending()
        except Exception:  # noqa: BLE001 - ending anyway
            log.debug("access log: final flush failed", exc_info=True)
        if self._flusher is not None:
            self._wake.set()
            self._flusher.kill(block=False)
            self._flusher = None
        if self.fd is not None and self.fd != 1:
            os.close(self.fd)
        self.fd = None

    def stats(self) -> dict:
        return {"destination": self.dest, "lines": self.lines, "dropped": self.dropped,
                "write_failures": self.write_failures, "reopened": self.reopened,
                "pending_bytes": self._pending_bytes}


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _direct(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def from_settings(settings: Any, off_hub: Runner = _direct) -> AccessLog | None:
    """The access log ``settings`` ask for (None when off); not yet opened."""
    dest = getattr(settings, "access_log", None)
    if dest is None:
        return None
    limits = Limits(settings.max_template_depth, settings.max_template_result_size, settings.max_template_parse_nodes)
    return AccessLog(dest, make_formatter(settings.access_log_format, limits),
                     settings.access_log_flush_ms / 1000.0, settings.access_log_buffer_bytes, off_hub)
