"""Loopback networking for tests: free ports, cooperative polling, raw TCP clients, raw HTTP/1
exchanges parsed with httptools (independent of vane's own codecs), and curl."""

from __future__ import annotations

import socket
import subprocess
import time
from typing import Any, Callable

import gevent
import httptools

# -- ports and waiting ------------------------------------------------------------------------


def free_port(kind: str = "tcp") -> int:
    """A port nobody listens on right now (bind port 0, read it, close)."""
    return free_ports(1, kind)[0]


def free_ports(n: int, kind: str = "tcp") -> list[int]:
    """``n`` distinct free ports (all held open until each is chosen)."""
    stype = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
    socks = [socket.socket(socket.AF_INET, stype) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> Any:
    """Poll ``predicate`` cooperatively; its last value (falsy on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        gevent.sleep(interval)


def accepts(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    """True when a TCP connect to the port succeeds."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def refused(port: int) -> bool:
    """True when a TCP connect to the port is refused (nobody listens)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        # A reset means the listener closed while this SYN sat in its backlog: not decided yet,
        # the next attempt tells.
        return False
    return False


# -- raw TCP clients ----------------------------------------------------------------------------


def connect(port: int, source: str | None = None, timeout: float = 3.0) -> socket.socket:
    """A TCP connection to 127.0.0.1:``port``, from the loopback address ``source`` if given."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                    source_address=(source, 0) if source else None)
    sock.settimeout(timeout)
    return sock


def tcp_pair(timeout: float = 2.0) -> tuple[socket.socket, socket.socket]:
    """A connected pair of TCP sockets on loopback (client, server side)."""
    with socket.socket() as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        a = socket.create_connection(lst.getsockname(), timeout=timeout)
        b, _ = lst.accept()
    a.settimeout(timeout)
    b.settimeout(timeout)
    return a, b


def recv_all(sock: socket.socket, limit: int = 1 << 30) -> bytes:
    """Read until EOF."""
    chunks = []
    n = 0
    while n < limit:
        chunk = sock.recv(262144)
        if not chunk:
            break
        chunks.append(chunk)
        n += len(chunk)
    return b"".join(chunks)


def recv_line(sock: socket.socket) -> bytes:
    """Read one line, up to and including its ``\\n`` (less at EOF)."""
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        buf += chunk
    return buf


def read_for(sock: socket.socket, seconds: float) -> bytes:
    """Everything that arrives within ``seconds`` or until EOF/reset."""
    out = b""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except (socket.timeout, ConnectionResetError):
            break
        if not data:
            break
        out += data
    return out


# -- raw HTTP/1 -----------------------------------------------------------------------------------


class _Responses:
    """httptools callbacks collecting complete responses in order."""

    def __init__(self) -> None:
        self.done: list[tuple[int, dict[str, str], bytes]] = []
        self._headers: dict[str, str] = {}
        self._body = b""
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, data: bytes) -> None:
        self._body += data

    def on_message_complete(self) -> None:
        self.done.append((self.parser.get_status_code(), self._headers, self._body))
        self._headers, self._body = {}, b""


def parse_responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The complete responses in ``data``, in order (status, headers, body)."""
    out = _Responses()
    try:
        out.parser.feed_data(data)
    except httptools.HttpParserError:
        pass
    return out.done


def exchange(port: int, data: bytes, seconds: float = 2.0, source: str = "127.0.0.1") -> list:
    """Send raw bytes on a fresh connection; the responses that came back within ``seconds``."""
    with connect(port, source, timeout=5.0) as sock:
        sock.sendall(data)
        return parse_responses(read_for(sock, seconds))


def curl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run curl (silent, errors shown); stdout is bytes."""
    return subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=timeout)
