"""Helpers for tests that run a real vaned: the daemon as a subprocess on a temporary config
dir, loopback backends (TCP echo, tagged echo, recorder, UDP echo, TLS), free ports.

Everything a ``Lab`` starts (daemons, backends, sockets) is stopped when it closes, and a
daemon still running then is killed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import gevent
import pytest
from gevent.pool import Group

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
VANED = [sys.executable, "-m", "vane.daemon.main"]
VANE = [sys.executable, "-m", "vane.cli.main"]

# Short timeouts so lifecycle tests stay fast; a test overrides what it exercises.
BASE_ENV = {
    "VANE_MGMT_HTTP_PORT": "",
    "VANE_RELOAD_DEBOUNCE_MS": "50",
    "VANE_DRAIN_TIMEOUT_SECS": "5",
    "VANE_BIND_BACKOFF_INITIAL_MS": "100",
    "VANE_BIND_BACKOFF_MAX_MS": "400",
    "VANE_BIND_MAX_ATTEMPTS": "3",
    "VANE_BOOT_HEALTH_TIMEOUT_SECS": "10",
    "VANE_LOG_LEVEL": "info",
}
_SCRUB = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "XDG_RUNTIME_DIR")


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


def rule(name: str, listen: str | list[str], flow: dict, **extra: Any) -> dict:
    return {"rule": name, "listen": listen if isinstance(listen, list) else [listen], "flow": flow, **extra}


def proxy(target: str | list[str], **inputs: Any) -> dict:
    return {"proxy": {"input": {"target": target, **inputs}}}


def connect(port: int, timeout: float = 3.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.settimeout(timeout)
    return s


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
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        buf += chunk
    return buf


def refused(port: int) -> bool:
    """True when a TCP connect to the port is refused (nobody listens)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


# -- backends ---------------------------------------------------------------------------------

class TcpServer:
    """A loopback TCP server running ``handler(server, conn)`` per connection in a greenlet."""

    def __init__(self, handler: Callable[["TcpServer", socket.socket], None], name: str = "",
                 host: str = "127.0.0.1") -> None:
        self.handler = handler
        self.name = name
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.target = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        self.accepted = 0
        self.peers: list[tuple] = []
        self.received: list[bytes] = []
        self._group = Group()
        self._loop = gevent.spawn(self._accept)

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.peers.append(peer)
            self._group.spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.handler(self, conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._loop.kill(block=False)
        self._group.kill(block=False)
        self.sock.close()


def echo(server: TcpServer, conn: socket.socket) -> None:
    """Echo until EOF, then half-close."""
    while True:
        data = conn.recv(262144)
        if not data:
            break
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)


def tagged(tag: bytes) -> Callable[[TcpServer, socket.socket], None]:
    """Say ``tag`` + CRLF first, then echo (an SSH-like banner, or a backend's name)."""
    def handler(server: TcpServer, conn: socket.socket) -> None:
        conn.sendall(tag + b"\r\n")
        echo(server, conn)
    return handler


def recorder(server: TcpServer, conn: socket.socket) -> None:
    """Keep everything received until EOF, then answer ``ok``."""
    conn.settimeout(5)
    server.received.append(recv_all(conn))
    conn.sendall(b"ok")


class UdpEcho:
    """Answers each datagram with ``echo:`` + the datagram; remembers the source addresses."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.target = f"127.0.0.1:{self.port}"
        self.sources: list[tuple] = []
        self._loop = gevent.spawn(self._run)

    def _run(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
                self.sources.append(addr)
                self.sock.sendto(b"echo:" + data, addr)
            except OSError:
                return

    def close(self) -> None:
        self._loop.kill(block=False)
        self.sock.close()


class TlsCerts:
    """A trustme CA and server certs; ``client_context()`` trusts only that CA."""

    def __init__(self) -> None:
        import trustme
        self.ca = trustme.CA()
        self._certs: dict[str, Any] = {}

    def server_context(self, hostname: str) -> ssl.SSLContext:
        cert = self._certs.get(hostname)
        if cert is None:
            cert = self._certs[hostname] = self.ca.issue_cert(hostname)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx


def tls_greeter(ctx: ssl.SSLContext, name: bytes) -> Callable[[TcpServer, socket.socket], None]:
    """A TLS server: read one line, answer ``name:`` + the line, close."""
    def handler(server: TcpServer, conn: socket.socket) -> None:
        conn.settimeout(5)
        tls = ctx.wrap_socket(conn, server_side=True)
        try:
            line = recv_line(tls)
            server.received.append(line)
            tls.sendall(name + b":" + line)
        except (OSError, ssl.SSLError):
            pass
        finally:
            tls.close()
    return handler


# -- the daemon -------------------------------------------------------------------------------

class Vaned:
    """One vaned subprocess with its stderr collected line by line."""

    def __init__(self, lab: "Lab", env: dict[str, str], argv: list[str] | None = None,
                 pass_fds: tuple[int, ...] = (), config_dir: Path | None = None,
                 preexec_fn: Callable[[], None] | None = None) -> None:
        self.lab = lab
        self.config_dir = config_dir or lab.conf
        self.sock_path = str(lab.base / "vaned.sock")
        full = {k: v for k, v in os.environ.items() if not k.startswith("VANE_") and k not in _SCRUB}
        full.update(BASE_ENV)
        full["VANE_MGMT_UNIX"] = self.sock_path
        full["VANE_STATE_DIR"] = str(lab.base / "state")
        full.update(env)
        self.env = full
        self.argv = argv if argv is not None else [*VANED, "--config", str(self.config_dir)]
        self.lines: list[str] = []
        self.proc = subprocess.Popen(self.argv, env=full, cwd=str(ROOT), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=pass_fds,
                                     preexec_fn=preexec_fn)
        self.pid = self.proc.pid
        self.stdout = ""
        self._err_reader = gevent.spawn(self._read_stderr)
        self._out_reader = gevent.spawn(self._read_stdout)

    def _read_stderr(self) -> None:
        for raw in self.proc.stderr:
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def _read_stdout(self) -> None:
        self.stdout = self.proc.stdout.read().decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def running(self) -> bool:
        return self.proc.poll() is None

    def find(self, pattern: str, since: int = 0) -> int:
        """Index of the first stderr line at or after ``since`` matching the regex, or -1."""
        rx = re.compile(pattern)
        for i in range(since, len(self.lines)):
            if rx.search(self.lines[i]):
                return i
        return -1

    def count(self, pattern: str, since: int = 0) -> int:
        rx = re.compile(pattern)
        return sum(1 for line in self.lines[since:] if rx.search(line))

    def wait_log(self, pattern: str, timeout: float = 5.0, since: int = 0) -> int:
        """Wait for a stderr line matching ``pattern``; its index. Fails the test on timeout."""
        found = wait_until(lambda: self.find(pattern, since) + 1 or (not self.running() and -1), timeout)
        if not found or found == -1:
            gevent.sleep(0.05)  # let the reader catch the last lines
            idx = self.find(pattern, since)
            if idx >= 0:
                return idx
            state = "running" if self.running() else f"exited {self.proc.returncode}"
            pytest.fail(f"vaned ({state}) did not log {pattern!r} within {timeout}s; stderr:\n{self.stderr}")
        return found - 1

    def wait_ready(self, timeout: float = 5.0) -> None:
        self.wait_log(r"vane\.daemon: vaned \S+ serving graph", timeout)

    def wait_listening(self, port: int, transport: str = "tcp", timeout: float = 5.0, since: int = 0) -> int:
        return self.wait_log(rf"listening on {transport} 127\.0\.0\.1:{port}\b", timeout, since)

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for the process to exit; its exit code. Fails the test on timeout."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"vaned did not exit within {timeout}s; stderr:\n{self.stderr}")
        self._err_reader.join(timeout=2)
        self._out_reader.join(timeout=2)
        return rc

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def cli(self, *args: str, timeout: float = 15.0) -> subprocess.CompletedProcess:
        """Run ``vane ARGS`` against this daemon's management socket."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("VANE_") and k not in _SCRUB}
        env["VANE_MGMT_UNIX"] = self.sock_path
        return subprocess.run([*VANE, *args], env=env, cwd=str(ROOT), capture_output=True, text=True,
                              timeout=timeout)

    def cli_json(self, *args: str) -> Any:
        res = self.cli(*args, "--json")
        assert res.returncode == 0, (res.returncode, res.stdout, res.stderr)
        return json.loads(res.stdout)

    def listeners(self) -> dict[str, dict]:
        """``vane get listeners --json`` keyed by address."""
        return {row["address"]: row for row in self.cli_json("get", "listeners")["listeners"]}

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for g in (self._err_reader, self._out_reader):
            g.kill(block=False)


class Lab:
    """A temporary base dir (``conf/`` config, the management socket) and everything started in it."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="vd", dir="/tmp"))  # short: unix socket paths
        self.conf = self.base / "conf"
        (self.conf / "rules").mkdir(parents=True)
        (self.base / "state").mkdir()
        self._closers: list[Callable[[], None]] = []
        self.daemons: list[Vaned] = []

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        for d in self.daemons:
            d.kill()
        for closer in reversed(self._closers):
            try:
                closer()
            except Exception:  # noqa: BLE001 - teardown goes on
                pass
        shutil.rmtree(self.base, ignore_errors=True)

    def on_close(self, closer: Callable[[], None]) -> None:
        self._closers.append(closer)

    # config files

    def write_rule(self, name: str, content: Any) -> Path:
        """Write ``rules/<name>`` atomically (a rename into the dir, as config tools do)."""
        text = content if isinstance(content, str) else json.dumps(content)
        staging = self.base / f".{name}.new"
        staging.write_text(text)
        path = self.conf / "rules" / name
        os.replace(staging, path)
        return path

    def remove_rule(self, name: str) -> None:
        (self.conf / "rules" / name).unlink()

    # processes and servers

    def vaned(self, rules: dict[str, Any] | None = None, env: dict[str, str] | None = None,
              ready: bool = True, **kw: Any) -> Vaned:
        for name, content in (rules or {}).items():
            self.write_rule(name, content)
        d = Vaned(self, env or {}, **kw)
        self.daemons.append(d)
        if ready:
            d.wait_ready()
        return d

    def tcp(self, handler: Callable[[TcpServer, socket.socket], None] = echo, name: str = "",
            host: str = "127.0.0.1") -> TcpServer:
        server = TcpServer(handler, name, host)
        self.on_close(server.close)
        return server

    def udp_echo(self) -> UdpEcho:
        server = UdpEcho()
        self.on_close(server.close)
        return server

    def hold(self, sock: socket.socket) -> socket.socket:
        self.on_close(sock.close)
        return sock

    def listening_socket(self, port: int = 0) -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(16)
        return self.hold(s)


def new_lab() -> Iterator[Lab]:
    """The body of a fixture: ``yield from new_lab()`` (any scope)."""
    with Lab() as lab_:
        yield lab_

