"""Management client for the unix socket or HTTP (DESIGN.md §9), used by ``vane`` and tests.

``Client.call(verb, args)`` returns the result or raises ``DaemonError`` (the daemon answered
with an error) or ``Unreachable`` (no daemon, or no management frame came back).
``Client.stream(verb, args)`` returns a ``StreamReader`` yielding the data of each stream
frame until the end frame. Every socket operation has a timeout.
"""

from __future__ import annotations

import http.client
import itertools
import json
import socket
from typing import Any, Iterator
from urllib.parse import urlsplit

from vane.mgmt.paths import client_socket_paths
from vane.mgmt.protocol import decode_frame, encode

__all__ = ["Client", "DaemonError", "StreamReader", "Unreachable"]

MAX_FRAME = 64 << 20  # a response larger than this is refused (bounded client memory)
HTTP_STREAM_TIMEOUT = 60.0  # the server sends a heartbeat every 15 idle seconds


class Unreachable(Exception):
    """No daemon answered at the address (exit code 2 in the CLI)."""


class DaemonError(Exception):
    """The daemon answered with an error frame (exit code 1 in the CLI)."""

    def __init__(self, error: dict) -> None:
        self.error = error if isinstance(error, dict) else {"kind": "Internal", "message": str(error)}
        self.kind: str = str(self.error.get("kind", "Internal"))
        self.message: str = str(self.error.get("message", ""))
        super().__init__(f"{self.kind}: {self.message}")


class _LineSocket:
    """A connected unix socket reading bounded lines; tolerant of read timeouts."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.buf = bytearray()
        try:
            self.sock.connect(path)
        except BaseException:
            self.sock.close()
            raise

    def send(self, data: bytes, timeout: float) -> None:
        self.sock.settimeout(timeout)
        self.sock.sendall(data)

    def readline(self, timeout: float) -> bytes | None:
        """One line (without the newline); None at EOF; raises TimeoutError (state stays valid)."""
        self.sock.settimeout(timeout)
        scanned = 0
        while True:
            i = self.buf.find(b"\n", scanned)
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 1]
                return line
            if len(self.buf) > MAX_FRAME:
                raise ValueError("response frame too large")
            scanned = len(self.buf)
            chunk = self.sock.recv(262144)
            if not chunk:
                return None
            self.buf += chunk

    def close(self) -> None:
        self.sock.close()


class StreamReader:
    """Iterate the data of a stream's frames; ``end_reason`` is set once the end frame came."""

    def __init__(self, frames: Iterator[dict], closer: Any) -> None:
        self._frames = frames
        self._closer = closer
        self.end_reason: str | None = None

    def __iter__(self) -> Iterator[Any]:
        try:
            for frame in self._frames:
                stream = frame.get("stream")
                if stream is None:
                    if frame.get("error"):
                        raise DaemonError(frame["error"])
                    continue
                if stream.get("end"):
                    self.end_reason = str(stream.get("reason", "done"))
                    return
                yield stream.get("data")
        finally:
            self.close()

    def close(self) -> None:
        if self._closer is not None:
            closer, self._closer = self._closer, None
            try:
                closer()
            except OSError:
                pass

    def __enter__(self) -> StreamReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client:
    """Talk to vaned over ``socket_path`` (default: the §2 search order) or ``http_url``."""

    def __init__(
        self,
        socket_path: str | None = None,
        http_url: str | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        connect_timeout: float = 2.0,
    ) -> None:
        if socket_path and http_url:
            raise ValueError("give either socket_path or http_url")
        self.socket_path = socket_path
        self.http_url = http_url.rstrip("/") if http_url else None
        self.token = token
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._conn: _LineSocket | None = None
        self._ids = itertools.count(1)
        if self.http_url:
            parts = urlsplit(self.http_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"not an http(s) URL: {http_url!r}")
            self._http = parts

    @property
    def address(self) -> str:
        """Where this client talks to (the connected socket, once known)."""
        if self.http_url:
            return self.http_url
        if self._conn is not None:
            return self._conn.path
        return self.socket_path or " or ".join(client_socket_paths())

    # public API ---------------------------------------------------------------------
    def call(self, verb: str, args: dict | None = None, timeout: float | None = None) -> Any:
        """Run one verb and return its result."""
        timeout = self.timeout if timeout is None else timeout
        frame = (self._call_http if self.http_url else self._call_unix)(verb, args or {}, timeout)
        if frame.get("error"):
            raise DaemonError(frame["error"])
        if "result" not in frame:
            raise Unreachable(f"{self.address}: unexpected frame from the daemon")
        return frame["result"]

    def stream(self, verb: str, args: dict | None = None, poll: float = 1.0) -> StreamReader:
        """Start a stream verb (tail_flow, tail_log); iterate the returned reader for its data."""
        if self.http_url:
            return self._stream_http(verb, args or {})
        return self._stream_unix(verb, args or {}, poll)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # unix -------------------------------------------------------------------------
    def _connect(self) -> _LineSocket:
        paths = [self.socket_path] if self.socket_path else client_socket_paths()
        errors = []
        for path in paths:
            try:
                return _LineSocket(path, self.connect_timeout)
            except OSError as e:
                errors.append(f"{path}: {e.strerror or e}")
        raise Unreachable("cannot reach vaned: " + "; ".join(errors))

    def _call_unix(self, verb: str, args: dict, timeout: float) -> dict:
        rid = str(next(self._ids))
        data = encode({"verb": verb, "args": args, "request_id": rid})
        for attempt in (0, 1):
            fresh = self._conn is None
            if fresh:
                self._conn = self._connect()
            conn = self._conn
            assert conn is not None
            try:
                conn.send(data, timeout)
            except OSError as e:
                self.close()
                if fresh or attempt:  # a stale kept-alive connection (daemon restarted) gets one retry
                    raise Unreachable(f"{conn.path}: {e}") from None
                continue
            try:
                while True:
                    line = conn.readline(timeout)
                    if line is None:
                        raise ConnectionResetError("the daemon closed the connection")
                    if not line.strip():
                        continue
                    frame = decode_frame(line)
                    if frame.get("request_id") in (rid, None):
                        return frame
            except TimeoutError:
                self.close()
                raise Unreachable(f"{conn.path}: no answer within {timeout:g}s") from None
            except ConnectionResetError as e:
                self.close()
                # The daemon closes a kept-alive connection only while it waits for a request
                # (idle timeout, or room for a new client): this one was never read. Retry once.
                if fresh or attempt:
                    raise Unreachable(f"{conn.path}: {e}") from None
            except (OSError, ValueError) as e:
                self.close()
                raise Unreachable(f"{conn.path}: {e}") from None
        raise Unreachable(self.address)

    def _stream_unix(self, verb: str, args: dict, poll: float) -> StreamReader:
        paths = [self.socket_path] if self.socket_path else client_socket_paths()
        conn = None
        errors = []
        for path in paths:
            try:
                conn = _LineSocket(path, self.connect_timeout)
                break
            except OSError as e:
                errors.append(f"{path}: {e.strerror or e}")
        if conn is None:
            raise Unreachable("cannot reach vaned: " + "; ".join(errors))
        try:
            conn.send(encode({"verb": verb, "args": args, "request_id": "stream"}), self.timeout)
        except OSError as e:
            conn.close()
            raise Unreachable(f"{conn.path}: {e}") from None

        def frames() -> Iterator[dict]:
            while True:
                try:
                    line = conn.readline(poll)
                except TimeoutError:
                    continue
                except (OSError, ValueError) as e:
                    raise Unreachable(f"{conn.path}: {e}") from None
                if line is None:
                    raise Unreachable(f"{conn.path}: the daemon closed the stream")
                if line.strip():
                    try:
                        yield decode_frame(line)
                    except ValueError as e:
                        raise Unreachable(f"{conn.path}: bad frame: {e}") from None

        return StreamReader(frames(), conn.close)

    # http -------------------------------------------------------------------------
    def _http_conn(self, timeout: float) -> http.client.HTTPConnection:
        p = self._http
        cls = http.client.HTTPSConnection if p.scheme == "https" else http.client.HTTPConnection
        return cls(p.hostname, p.port, timeout=timeout)

    def _http_request(self, verb: str, args: dict, timeout: float) -> tuple[Any, http.client.HTTPResponse]:
        conn = self._http_conn(timeout)
        headers = {"Content-Type": "application/json", "Accept": "application/json, application/x-ndjson"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        path = (self._http.path.rstrip("/") or "") + f"/v1/{verb}"
        try:
            conn.request("POST", path, body=json.dumps(args).encode(), headers=headers)
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise Unreachable(f"{self.http_url}: {e}") from None

    def _call_http(self, verb: str, args: dict, timeout: float) -> dict:
        conn, resp = self._http_request(verb, args, timeout)
        try:
            body = resp.read(MAX_FRAME + 1)
        except (OSError, http.client.HTTPException) as e:
            raise Unreachable(f"{self.http_url}: {e}") from None
        finally:
            conn.close()
        try:
            return decode_frame(body)
        except ValueError:
            raise Unreachable(f"{self.http_url}: HTTP {resp.status}, not a vaned management response") from None

    def _stream_http(self, verb: str, args: dict) -> StreamReader:
        conn, resp = self._http_request(verb, args, max(self.timeout, HTTP_STREAM_TIMEOUT))
        if resp.getheader("Content-Type", "").startswith("application/json"):
            try:
                frame = decode_frame(resp.read(MAX_FRAME + 1))
            except (ValueError, OSError, http.client.HTTPException):
                conn.close()
                raise Unreachable(f"{self.http_url}: HTTP {resp.status}, not a vaned stream") from None
            conn.close()
            raise DaemonError(frame.get("error") or {"kind": "Internal", "message": "not a stream"})

        def frames() -> Iterator[dict]:
            while True:
                try:
                    line = resp.readline(MAX_FRAME)
                except (OSError, http.client.HTTPException) as e:
                    raise Unreachable(f"{self.http_url}: {e}") from None
                if not line:
                    raise Unreachable(f"{self.http_url}: the daemon closed the stream")
                if line.strip():
                    try:
                        yield decode_frame(line)
                    except ValueError as e:
                        raise Unreachable(f"{self.http_url}: bad frame: {e}") from None

        def close() -> None:
            resp.close()
            conn.close()

        return StreamReader(frames(), close)
