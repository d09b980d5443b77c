"""A raw HTTP/2 client on the h2 library that sends what its caller gives it, malformed or not.

h2's own outbound checks are off, so a test can put CR LF into a value, an upper-case name or
a connection-specific field into a request and see what vaned makes of it.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings


class RawH2:
    """One cleartext HTTP/2 connection (prior knowledge) to 127.0.0.1:``port``."""

    def __init__(self, port: int, source: str = "127.0.0.1", window: int | None = None) -> None:
        self.sock = socket.socket()
        self.sock.bind((source, 0))
        self.sock.settimeout(5)
        self.sock.connect(("127.0.0.1", port))
        config = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                           validate_outbound_headers=False,
                                           normalize_outbound_headers=False,
                                           validate_inbound_headers=False)
        self.conn = h2.connection.H2Connection(config=config)
        if window is not None:
            self.conn.local_settings = h2.settings.Settings(client=True, initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.conn.initiate_connection()
        self.flush()
        self.responses: dict[int, dict[str, Any]] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False
        self.window_waits = 0   # times ``upload`` waited for the peer to open a shut window

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, headers: list[tuple[bytes, bytes]], body: bytes | None = None,
                end: bool = True) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, headers, end_stream=body is None and end)
        if body is not None:
            self.conn.send_data(sid, body, end_stream=end)
        self.flush()
        return sid

    def get(self, path: bytes = b"/", authority: bytes = b"site.test", extra: list | None = None) -> int:
        return self.request([(b":method", b"GET"), (b":scheme", b"http"), (b":authority", authority),
                             (b":path", path)] + (extra or []))

    def pump(self, until: Any, seconds: float = 5.0) -> bool:
        """Read and handle frames until ``until()`` is true, EOF, or ``seconds`` pass."""
        deadline = time.monotonic() + seconds
        while not until():
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                return bool(until())
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, ConnectionResetError):
                return bool(until())
            if not data:
                self.closed = True
                return bool(until())
            for event in self.conn.receive_data(data):
                self._on(event)
            self.flush()
        return True

    def _on(self, event: Any) -> None:
        sid = getattr(event, "stream_id", None)
        if isinstance(event, h2.events.ResponseReceived):
            headers = dict(event.headers)
            self.responses.setdefault(sid, {})["status"] = int(headers[b":status"])
        elif isinstance(event, h2.events.InformationalResponseReceived):
            r = self.responses.setdefault(sid, {})
            r.setdefault("informational", []).append(int(dict(event.headers)[b":status"]))
        elif isinstance(event, h2.events.DataReceived):
            r = self.responses.setdefault(sid, {})
            r["body"] = r.get("body", b"") + event.data
            self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
        elif isinstance(event, h2.events.TrailersReceived):
            self.responses.setdefault(sid, {})["trailers"] = list(event.headers)
        elif isinstance(event, h2.events.StreamEnded):
            self.responses.setdefault(sid, {})["ended"] = True
        elif isinstance(event, h2.events.StreamReset):
            self.responses.setdefault(sid, {})["reset"] = event.error_code
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event

    def upload(self, headers: list[tuple[bytes, bytes]], body: bytes, seconds: float = 30.0) -> int:
        """Send a request with ``body`` as fast as the peer's flow-control windows allow."""
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, headers)
        view = memoryview(body)
        off = 0
        deadline = time.monotonic() + seconds
        while off < len(body):
            room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size,
                       len(body) - off)
            if room > 0:
                self.conn.send_data(sid, view[off:off + room].tobytes(), end_stream=off + room == len(body))
                off += room
                self.flush()            # frame by frame, as a streaming client writes
                continue
            self.flush()
            if time.monotonic() > deadline or self.closed or "reset" in self.responses.get(sid, {}):
                raise TimeoutError(f"stream {sid}: window shut after {off} bytes")
            self.window_waits += 1
            self.pump(lambda: self.conn.local_flow_control_window(sid) > 0
                      or "reset" in self.responses.get(sid, {}), deadline - time.monotonic())
        self.flush()
        return sid

    def answer(self, sid: int, seconds: float = 5.0) -> dict[str, Any]:
        """The stream's outcome: ``status``/``body``/``trailers``/``ended`` or ``reset`` (error
        code), and the ``informational`` (1xx) statuses before the answer."""
        self.pump(lambda: self.responses.get(sid, {}).get("ended") or "reset" in self.responses.get(sid, {}),
                  seconds)
        return self.responses.get(sid, {})

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
