"""Management without a real daemon: a fake implementing DaemonAPI with canned, consistent
state, the real unix and HTTP management servers started in front of it, a raw NDJSON
connection for protocol-level tests, and short directories for unix sockets.

The management servers under test are real (real sockets); only the daemon behind them is fake.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from types import SimpleNamespace
from typing import Any, Iterator

from vane.config.errors import CompileFailed, ConfigError
from vane.mgmt.server_http import HttpMgmtServer
from vane.mgmt.server_unix import UnixMgmtServer
from vane.observe.flowlog import FlowLog
from vane.observe.hub import Hub
from vane.observe.metrics import Metrics

HASH_A = "a1b2c3d4e5f6a7b8c9d0"
HASH_B = "ffee00112233445566778899"

COMPILE_ERRORS = [
    ConfigError("rules/20-api.json", "/0/flow", "unknown plugin 'prxy'"),
    ConfigError("rules/30-web.json", "/listen/0", "port 0 is not allowed"),
]

LISTENERS = [
    {"address": "tcp 0.0.0.0:8080", "transport": "tcp", "state": "listening", "bind_attempts": 1,
     "last_error": None, "connections": 2},
    {"address": "tcp [::]:8080", "transport": "tcp", "state": "listening", "bind_attempts": 1,
     "last_error": None, "connections": 0},
    {"address": "tcp 0.0.0.0:443", "transport": "tcp", "state": "retrying", "bind_attempts": 3,
     "last_error": "Address already in use", "connections": 0},
]
CONNECTIONS = [
    {"id": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "remote": "192.0.2.7:51000", "local": "10.0.0.1:8080",
     "listener": "tcp 0.0.0.0:8080", "rule": "blog", "node": "/proxy", "layer": "l7",
     "bytes_in": 1200, "bytes_out": 53000, "age_secs": 12.5},
    {"id": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c", "remote": "[2001:db8::9]:40000", "local": "10.0.0.1:8080",
     "listener": "tcp 0.0.0.0:8080", "rule": None, "node": "/", "layer": "l4",
     "bytes_in": 0, "bytes_out": 0, "age_secs": 0.2},
]
PLUGINS = [
    {"name": "auth", "driver": "wasm", "branches": ["success", "failure"],
     "breaker": {"state": "closed", "failures": 0, "open_until": None}},
    {"name": "geo", "driver": "http", "branches": ["eu", "other", "failure"],
     "breaker": {"state": "open", "failures": 4, "open_until": 1700000003.0}},
]
UPSTREAMS = [
    {"upstream": "http://127.0.0.1:3000", "idle": 3, "active": 2, "max_idle": 32, "max_active": 256},
]
GROUPS = [
    {"group": "api", "backend": "http://10.0.0.5:8080", "state": "up", "admin": "enabled", "weight": 2,
     "backup": False, "active": 1, "balance": "round_robin", "health": "up", "last_check": 1700000000.25,
     "latency_ms": 1.5, "check": "ok", "error": None, "check_failures": 0, "check_successes": 7,
     "checks": {"ok": 7, "fail": 0, "timeout": 0}, "failures": 0, "ejected_secs": 0.0},
    {"group": "api", "backend": "http://10.0.0.6:8080", "state": "down", "admin": "enabled", "weight": 1,
     "backup": False, "active": 0, "balance": "round_robin", "health": "down", "last_check": 1700000000.5,
     "latency_ms": None, "check": "fail", "error": "connection refused", "check_failures": 3,
     "check_successes": 0, "checks": {"ok": 2, "fail": 3, "timeout": 0}, "failures": 0, "ejected_secs": 0.0},
]
CERTS = [
    {"path": "certs/blog.pem", "subject": "CN=blog.example.com", "sans": ["blog.example.com", "www.blog.example.com"],
     "issuer": "CN=Example CA", "serial": "1a2b", "source": "file",
     "not_after": "2027-01-01T00:00:00Z", "listeners": ["tcp 0.0.0.0:443", "tcp [::]:443"]},
    {"path": "(self-signed fallback)", "subject": "CN=shop.example.com", "sans": ["shop.example.com"],
     "issuer": "CN=shop.example.com", "serial": "3c4d", "source": "acme", "fallback": True, "state": "error",
     "names": ["shop.example.com"], "last_error": "cannot reach the CA: connection refused",
     "next_attempt": "2026-12-01T10:01:00+00:00",
     "not_after": "2026-12-08T10:00:00+00:00", "listeners": ["tcp 0.0.0.0:443", "tcp [::]:443"]},
]


def flow_entry(i: int = 0, **over: Any) -> dict:
    entry = {
        "ts": time.time(), "conn": f"0190a1b2-0000-7000-8000-{i:012d}", "listener": "tcp 0.0.0.0:8080",
        "rule": "blog", "layer": "l7",
        "steps": [{"node": "/", "plugin": "match", "branch": "true", "ms": 0.01},
                  {"node": "/match/true/proxy", "plugin": "proxy", "branch": None, "ms": 1.2}],
        "outcome": "finished", "status": 200, "method": "GET", "host": "blog.example.com", "path": f"/post/{i}",
        "bytes_in": 310, "bytes_out": 5120, "ms": 1.4, "errors": [], "missing": [],
    }
    entry.update(over)
    return entry


class FakeDaemon:
    """Implements vane.mgmt.api.DaemonAPI with canned state."""

    def __init__(self, http_port: int | None = None, token: str | None = None, public: bool = False,
                 token_file: str | None = None) -> None:
        self.settings = SimpleNamespace(
            mgmt_unix=None, mgmt_group=None, mgmt_http_port=http_port, mgmt_http_token=token,
            mgmt_http_token_file=token_file, mgmt_http_public=public, mgmt_http_host=(),
            log_level="info", log_file=None, log_format="text", flow_log_file=None,
        )
        self.flow_log = FlowLog()
        self.log_hub = Hub()
        self.metrics = Metrics()
        self.started = time.time() - 3725
        self.hash = HASH_A
        self.next_hash = HASH_A
        self.reload_fails = False
        self.shutdown_called = False
        self.fail: set[str] = set()  # method names that raise RuntimeError
        self.groups: list[dict] = []  # get_upstream_groups rows (GROUPS for a daemon with upstream groups)
        self.admin_calls: list[tuple[str, str, str]] = []
        self.last_reload = {"time": self.started, "result": "reloaded", "error": None}
        self.metrics.conn_opened("tcp 0.0.0.0:8080")
        self.metrics.request("blog", 200, 0.012)
        self.metrics.request("blog", 502, 0.5)
        self.metrics.reload("reloaded")

    def _check(self, name: str) -> None:
        if name in self.fail:
            raise RuntimeError(f"{name} exploded")

    def stats(self) -> dict:
        self._check("stats")
        return {
            "uptime_secs": round(time.time() - self.started, 3), "version": "0.1.0", "graph_hash": self.hash,
            "last_reload": self.last_reload,
            "listeners": {"listening": 2, "retrying": 1},
            "connections": {"active": len(CONNECTIONS), "total": 1234},
        }

    def reload(self) -> dict:
        self._check("reload")
        if self.reload_fails:
            self.last_reload = {"time": time.time(), "result": "failed", "error": str(COMPILE_ERRORS[0])}
            raise CompileFailed(COMPILE_ERRORS)
        status = "unchanged" if self.next_hash == self.hash else "reloaded"
        self.hash = self.next_hash
        self.last_reload = {"time": time.time(), "result": status, "error": None}
        return {"status": status, "hash": self.hash}

    def shutdown(self) -> None:
        self.shutdown_called = True

    def compile_dry_run(self, dir: str) -> dict:
        self._check("compile_dry_run")
        if "bad" in dir:
            raise CompileFailed(COMPILE_ERRORS)
        return {"hash": HASH_B, "listeners": ["tcp 0.0.0.0:8080", "tcp [::]:8080"],
                "trees": {"tcp 0.0.0.0:8080": {"match": {"input": {}, "output": {}}}}}

    def get_config(self) -> dict:
        return {"hash": self.hash, "config": {"plugins": {"auth": {"wasm": "wasm/auth.wasm"}}},
                "rules": [{"rule": "blog", "listen": [":8080"]}],
                "trees": {"tcp 0.0.0.0:8080": {"proxy": {"input": {"upstream": "http://127.0.0.1:3000"}}}}}

    def get_listeners(self) -> list[dict]:
        return LISTENERS

    def get_connections(self) -> list[dict]:
        return CONNECTIONS

    def get_plugins(self) -> list[dict]:
        return PLUGINS

    def get_upstreams(self) -> list[dict]:
        return UPSTREAMS

    def get_upstream_groups(self) -> list[dict]:
        return self.groups

    def set_upstream(self, group: str, backend: str, action: str) -> dict:
        if group != "api":
            raise LookupError(f'no upstream group "{group}" (groups: api)')
        rows = [r for r in GROUPS if r["backend"] == backend or r["backend"].endswith("//" + backend)]
        if not rows:
            raise LookupError(f'no backend "{backend}" in upstream group api')
        self.admin_calls.append((group, backend, action))
        state = {"drain": "draining", "disable": "disabled", "enable": "up"}[action]
        return {"group": group, "backend": rows[0]["backend"], "state": state, "previous": rows[0]["state"]}

    def get_certs(self) -> list[dict]:
        self._check("get_certs")
        return CERTS

    def set_flow_log(self, level: str) -> dict:
        self.flow_log.level = level
        return {"level": level}

    def reopen_logs(self) -> dict:
        return {"access_log": None, "reopened": False}


def start_unix(daemon: FakeDaemon, path: str, **kw: Any) -> UnixMgmtServer:
    server = UnixMgmtServer(daemon, str(path), **kw)
    server.start()
    return server


def start_http(daemon: FakeDaemon, token: str | None = None, **kw: Any) -> HttpMgmtServer:
    server = HttpMgmtServer(daemon, port=0, token=token, hosts=["127.0.0.1"], **kw)
    server.start()
    return server


class RawConn:
    """A bare unix-socket connection speaking NDJSON, for protocol-level tests."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""

    def send(self, obj: Any) -> None:
        data = obj if isinstance(obj, bytes) else json.dumps(obj).encode() + b"\n"
        self.sock.sendall(data)

    def frame(self) -> dict | None:
        """The next frame, or None at EOF."""
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def close(self) -> None:
        self.sock.close()


def short_tmpdir() -> Iterator[str]:
    """A short directory for unix sockets (paths are limited to 107 bytes)."""
    d = tempfile.mkdtemp(prefix="vm", dir="/tmp")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def sock_in(d: str) -> str:
    return os.path.join(d, "vaned.sock")
