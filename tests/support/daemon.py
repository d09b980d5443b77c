"""A real vaned for tests: ``Vaned`` runs one daemon as a subprocess on a config dir, and a
``Lab`` owns a temporary config dir with everything started in it (daemons, servers, sockets).

The daemon's stdout and stderr go to unlinked temporary files, read as they grow: a line the
daemon wrote before it answered a request is there when the test reads the answer, and a
daemon that logs a lot never blocks on a full pipe.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from .backends import TcpServer, UdpEcho, echo
from .net import accepts, wait_until

ROOT = Path(__file__).resolve().parent.parent.parent
BIN = Path(sys.executable).parent
VANED = [sys.executable, "-m", "vane.daemon.main"]
VANE = [sys.executable, "-m", "vane.cli.main"]

# Set by systemd for the test runner itself; a daemon under test must not inherit them.
SYSTEMD_VARS = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "XDG_RUNTIME_DIR")

# Short timeouts so lifecycle tests stay fast; a test overrides what it exercises.
QUICK_TIMEOUTS = {
    "VANE_RELOAD_DEBOUNCE_MS": "50",
    "VANE_DRAIN_TIMEOUT_SECS": "5",
    "VANE_BIND_BACKOFF_INITIAL_MS": "100",
    "VANE_BIND_BACKOFF_MAX_MS": "400",
    "VANE_BIND_MAX_ATTEMPTS": "3",
    "VANE_BOOT_HEALTH_TIMEOUT_SECS": "10",
}


def clean_environ(drop: tuple[str, ...] = ()) -> dict[str, str]:
    """This process's environment without any ``VANE_*`` variable (nor the names in ``drop``)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("VANE_") and k not in drop}


class _Output:
    """One output stream of a child process, in an unlinked temporary file read as it grows."""

    def __init__(self) -> None:
        self.file: Any = tempfile.TemporaryFile()
        self.lines: list[str] = []
        self._offset = 0
        self._pending = b""

    def refresh(self, final: bool = False) -> list[str]:
        """The complete lines so far; with ``final`` (the writer is gone) the last partial one too."""
        if self.file is None:
            return self.lines
        while chunk := os.pread(self.file.fileno(), 1 << 20, self._offset):
            self._offset += len(chunk)
            self._pending += chunk
        *complete, self._pending = self._pending.split(b"\n")
        if final and self._pending:
            complete.append(self._pending)
            self._pending = b""
        self.lines.extend(raw.decode("utf-8", "replace") for raw in complete)
        return self.lines

    def close(self) -> None:
        if self.file is not None:
            self.refresh(final=True)
            self.file.close()
            self.file = None


class Vaned:
    """One vaned subprocess on ``config_dir``: owns the process and its output.

    The management socket and the state dir are in ``run_dir`` (the config dir by default).
    The environment holds no ``VANE_*`` variable of the test runner's, only management over
    the unix socket, info logging and what ``env`` sets.
    """

    def __init__(self, config_dir: str | os.PathLike, env: dict[str, str] | None = None, *,
                 run_dir: str | os.PathLike | None = None, argv: list[str] | None = None,
                 pass_fds: tuple[int, ...] = (), preexec_fn: Callable[[], None] | None = None) -> None:
        self.config_dir = Path(config_dir)
        run = Path(run_dir) if run_dir is not None else self.config_dir
        self.sock_path = str(run / "vaned.sock")
        full = clean_environ(drop=SYSTEMD_VARS)
        full.update({"VANE_MGMT_HTTP_PORT": "", "VANE_LOG_LEVEL": "info", "VANE_MGMT_UNIX": self.sock_path,
                     "VANE_STATE_DIR": str(run / "state")})
        if os.environ.get("VANE_TEST_WORKERS"):   # the suite run against a master and workers
            full["VANE_WORKERS"] = os.environ["VANE_TEST_WORKERS"]
        full.update(env or {})
        self.env = full
        self.argv = argv if argv is not None else [*VANED, "--config", str(self.config_dir)]
        self._out, self._err = _Output(), _Output()
        self.proc = subprocess.Popen(self.argv, env=full, cwd=str(ROOT), stdin=subprocess.DEVNULL,
                                     stdout=self._out.file, stderr=self._err.file, pass_fds=pass_fds,
                                     preexec_fn=preexec_fn)
        self.pid = self.proc.pid

    # -- output -------------------------------------------------------------------------------

    @property
    def lines(self) -> list[str]:
        """stderr so far, one entry per line (the log)."""
        return self._err.refresh(final=not self.running())

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    @property
    def stdout(self) -> str:
        return "\n".join(self._out.refresh(final=not self.running()))

    def find(self, pattern: str, since: int = 0) -> int:
        """Index of the first stderr line at or after ``since`` matching the regex, or -1."""
        rx = re.compile(pattern)
        lines = self.lines
        for i in range(since, len(lines)):
            if rx.search(lines[i]):
                return i
        return -1

    def count(self, pattern: str, since: int = 0) -> int:
        """How many stderr lines at or after ``since`` match the regex."""
        rx = re.compile(pattern)
        return sum(1 for line in self.lines[since:] if rx.search(line))

    def wait_log(self, pattern: str, timeout: float = 5.0, since: int = 0) -> int:
        """Wait for a stderr line matching ``pattern``; its index. Fails the test on timeout."""
        found = wait_until(lambda: self.find(pattern, since) + 1 or (not self.running() and -1), timeout)
        if found and found > 0:
            return found - 1
        idx = self.find(pattern, since)  # logged on its way out
        if idx >= 0:
            return idx
        state = "running" if self.running() else f"exited {self.proc.returncode}"
        pytest.fail(f"vaned ({state}) did not log {pattern!r} within {timeout}s; stderr:\n{self.stderr}")

    # -- readiness ----------------------------------------------------------------------------

    def wait_ready(self, timeout: float = 5.0) -> None:
        """Wait for the log line saying the graph is served."""
        self.wait_log(r"vane\.daemon: vaned \S+ serving graph", timeout)

    def wait_listening(self, port: int, transport: str = "tcp", timeout: float = 5.0, since: int = 0) -> int:
        """Wait for the log line saying a listener on 127.0.0.1:``port`` is bound; its index."""
        return self.wait_log(rf"listening on {transport} 127\.0\.0\.1:{port}\b", timeout, since)

    def wait_accepting(self, port: int, timeout: float = 15.0) -> "Vaned":
        """Wait until a TCP connect to 127.0.0.1:``port`` succeeds. Fails the test on timeout."""
        if not wait_until(lambda: accepts(port, timeout=0.5), timeout, interval=0.05):
            raise AssertionError(f"vaned did not listen on {port}:\n{self.stderr}")
        return self

    # -- process ------------------------------------------------------------------------------

    def running(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for the process to exit; its exit code. Fails the test on timeout."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"vaned did not exit within {timeout}s; stderr:\n{self.stderr}")

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it is still running 10 s later; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._close_output()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL if still running (teardown)."""
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._close_output()

    def _close_output(self) -> None:
        if self.proc.poll() is not None:
            self._out.close()
            self._err.close()

    # -- management ---------------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 15.0) -> subprocess.CompletedProcess:
        """Run ``vane ARGS`` against this daemon's management socket."""
        env = clean_environ(drop=SYSTEMD_VARS)
        env["VANE_MGMT_UNIX"] = self.sock_path
        return subprocess.run([*VANE, *args], env=env, cwd=str(ROOT), capture_output=True, text=True,
                              timeout=timeout)

    def cli_json(self, *args: str) -> Any:
        """``vane ARGS --json``, which must succeed; its output parsed."""
        res = self.cli(*args, "--json")
        assert res.returncode == 0, (res.returncode, res.stdout, res.stderr)
        return json.loads(res.stdout)

    def listeners(self) -> dict[str, dict]:
        """``vane get listeners --json`` keyed by address."""
        return {row["address"]: row for row in self.cli_json("get", "listeners")["listeners"]}

    def mgmt(self, verb: str, args: dict | None = None) -> Any:
        """One management request over the unix socket; its result (an error raises RuntimeError)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(self.sock_path)
            s.sendall(json.dumps({"verb": verb, "args": args or {}, "request_id": "1"}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        reply = json.loads(data)
        if reply.get("error"):
            raise RuntimeError(reply["error"])
        return reply["result"]


class Lab:
    """A temporary base dir (``conf/`` config, the management socket, the state dir) and
    everything started in it. Closing it kills the daemons still running and stops the rest."""

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
              ready: bool = True, config_dir: Path | None = None, **kw: Any) -> Vaned:
        """Write ``rules``, start vaned with short timeouts (``env`` overrides them), wait until
        it serves unless ``ready`` is false. ``kw``: ``argv``, ``pass_fds``, ``preexec_fn``."""
        for name, content in (rules or {}).items():
            self.write_rule(name, content)
        d = Vaned(config_dir or self.conf, {**QUICK_TIMEOUTS, **(env or {})}, run_dir=self.base, **kw)
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
        """Close ``sock`` with the lab."""
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
