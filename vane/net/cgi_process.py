"""Running one CGI program (RFC 3875 subset) for the ``cgi`` terminator (DESIGN.md §6).

The program gets a cleared environment (built by the caller), the request body on stdin (fed
by a helper greenlet) and its own process group. Its stdout starts with a header block
(``Status:``, ``Location:``, ``Content-Type`` and any other fields) that ends at an empty line;
the rest streams back as the response body. One deadline covers the whole run: past it, or
past ``max_output`` body bytes, the process group is killed. Pipes are non-blocking and
waited on through the gevent hub; stderr lines go to the log (bounded).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from typing import Any, Iterator

import gevent
from gevent import Timeout
from gevent import os as gos

from vane.net.http.message import HOP_BY_HOP, Body, Headers

log = logging.getLogger("vane.cgi")

CHUNK = 65536
MAX_HEAD = 65536
MAX_STDERR_LOG = 8192


class CgiError(Exception):
    """The program failed before a usable header block (answered 502)."""


class CgiTimeout(CgiError):
    """The program ran past its deadline (answered 504, or the body is cut)."""


class CgiRun:
    """One running program: spawn, feed stdin, read the head, stream the body."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: str, timeout: float, max_output: int,
                 user: int | None = None, group: int | None = None, label: str = "cgi") -> None:
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout
        self.max_output = max_output
        self.label = label
        extra: dict[str, Any] = {}
        if group is not None:
            extra["group"] = group
            extra["extra_groups"] = []
        if user is not None:
            extra["user"] = user
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env, cwd=cwd, close_fds=True, start_new_session=True, **extra)
        self._out = self.proc.stdout.fileno()
        self._err = self.proc.stderr.fileno()
        gos.make_nonblocking(self._out)
        gos.make_nonblocking(self._err)
        self._finished = False
        self._helpers: list[Any] = [gevent.spawn(self._log_stderr)]

    # -- stdin -----------------------------------------------------------------------------------

    def feed(self, body: Body) -> None:
        """Write the request body to stdin in a helper greenlet, then close stdin."""
        self._helpers.append(gevent.spawn(self._feed, body))

    def _feed(self, body: Body) -> None:
        fd = self.proc.stdin.fileno()
        gos.make_nonblocking(fd)
        try:
            for chunk in body:
                view = memoryview(chunk)
                while view:
                    with Timeout(self._remaining()):
                        n = gos.nb_write(fd, view)
                    view = view[n:]
        except (OSError, Timeout):
            pass                        # the program stopped reading (or ran out of time)
        except Exception as exc:  # noqa: BLE001 - the client's body broke: the program sees EOF
            log.info("%s: request body ended early: %s", self.label, exc)
        finally:
            body.close()
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    # -- stdout ----------------------------------------------------------------------------------

    def _remaining(self) -> float:
        return max(self.deadline - time.monotonic(), 0.000001)

    def _read(self, fd: int) -> bytes:
        timer = Timeout(self._remaining())
        timer.start()
        try:
            return gos.nb_read(fd, CHUNK)
        except Timeout as exc:
            if exc is not timer:
                raise
            raise CgiTimeout(f"{self.label}: no output within {self.timeout:g}s") from None
        finally:
            timer.close()

    def read_head(self) -> tuple[int, Headers, bytes]:
        """Status, header fields and the body bytes read past the header block."""
        buf = b""
        while True:
            data = self._read(self._out)
            if not data:
                self.kill()
                raise CgiError(f"{self.label}: exited without a complete header block"
                               f" (exit status {self._status()})")
            buf += data
            end, sep_len = _head_end(buf)
            if end >= 0:
                break
            if len(buf) > MAX_HEAD:
                self.kill()
                raise CgiError(f"{self.label}: header block larger than {MAX_HEAD} bytes")
        head, rest = buf[:end], buf[end + sep_len:]
        status, headers = parse_head(head, self.label)
        return status, headers, rest

    def body(self, first: bytes) -> Body:
        return Body(self._body(first), None, close=self.kill)

    def _body(self, first: bytes) -> Iterator[bytes]:
        total = 0
        data = first
        try:
            while True:
                if data:
                    total += len(data)
                    if total > self.max_output:
                        log.warning("%s: output larger than max_output (%d bytes): killed", self.label,
                                    self.max_output)
                        raise OSError(f"{self.label}: output larger than max_output ({self.max_output} bytes)")
                    yield data
                data = self._read(self._out)
                if not data:
                    break
        except CgiTimeout as exc:
            log.warning("%s", exc)
            raise TimeoutError(str(exc)) from None   # an OSError: the server aborts the response
        except BaseException:
            self.kill()                 # stopped early (limit, client gone): do not wait for it
            raise
        self.finish()

    # -- ending ----------------------------------------------------------------------------------

    def finish(self) -> None:
        """Reap the process (killing it if it lingers past the deadline)."""
        if self._finished:
            return
        self._finished = True
        try:
            self.proc.wait(timeout=self._remaining())
        except subprocess.TimeoutExpired:
            self._killpg()
        self._cleanup()

    def kill(self) -> None:
        """Stop now: kill the process group and reap it in the background."""
        if self._finished:
            return
        self._finished = True
        self._killpg()
        self._cleanup()

    def _killpg(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        gevent.spawn(self.proc.wait)

    def _cleanup(self) -> None:
        stderr, *others = self._helpers
        for helper in others:
            helper.kill(block=False)
        if self.proc.poll() is not None:
            stderr.join(timeout=0.2)        # what it said before exiting is worth logging
        stderr.kill(block=False)
        for f in (self.proc.stdout, self.proc.stderr, self.proc.stdin):
            try:
                f.close()
            except OSError:
                pass

    def _status(self) -> str:
        try:
            code = self.proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            return "still running"
        return str(code)

    def _log_stderr(self) -> None:
        logged = 0
        pending = b""
        try:
            while True:
                data = gos.nb_read(self._err, CHUNK)
                if not data:
                    break
                if logged >= MAX_STDERR_LOG:
                    continue
                pending += data
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if logged < MAX_STDERR_LOG:
                        logged += len(line)
                        log.warning("%s stderr: %s", self.label, line.decode("utf-8", "replace")[:1000])
        except OSError:
            pass


def _head_end(buf: bytes) -> tuple[int, int]:
    """Index and length of the blank line ending the header block, or (-1, 0)."""
    best = (-1, 0)
    for sep in (b"\r\n\r\n", b"\n\n", b"\n\r\n"):
        i = buf.find(sep)
        if i >= 0 and (best[0] < 0 or i < best[0]):
            best = (i, len(sep))
    return best


def parse_head(head: bytes, label: str = "cgi") -> tuple[int, Headers]:
    """RFC 3875 §6.3: ``Status``, ``Location`` (a redirect: 302 unless Status says otherwise)."""
    headers = Headers()
    status = None
    location = False
    for raw in head.split(b"\n"):
        line = raw.rstrip(b"\r")
        if not line:
            continue
        name, sep, value = line.partition(b":")
        name = name.strip().lower()
        if not sep or not name or b" " in name:
            raise CgiError(f"{label}: malformed header line {line[:80]!r}")
        value = value.strip()
        if name == b"status":
            try:
                status = int(value.split(None, 1)[0])
            except (ValueError, IndexError):
                raise CgiError(f"{label}: bad Status {value[:40]!r}") from None
            if not 100 <= status <= 999:
                raise CgiError(f"{label}: bad Status {value[:40]!r}")
            continue
        if name in HOP_BY_HOP or name == b"content-length":
            continue
        if name == b"location":
            location = True
        headers.items_.append((name, value))
    if status is None:
        status = 302 if location else 200
    return status, headers
