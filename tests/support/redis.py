"""A real Redis server for the tests that share limits through one.

redis-server comes from Debian (`redis-server`; CI installs it). Each server runs on its own
port and directory, with no persistence, and can be stopped and started again on the same
port (a store that goes away and comes back).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .net import accepts, free_port, wait_until


def redis_binary() -> str:
    path = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed (.ci/run installs it)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    return path


class Redis:
    """One redis-server on loopback; ``stop``/``start`` keep the port."""

    def __init__(self, base: Path) -> None:
        self.dir = base
        base.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        up = wait_until(lambda: accepts(self.port, timeout=0.5) or self.proc.poll() is not None, 10, interval=0.05)
        if not up or self.proc.poll() is not None:
            raise RuntimeError(f"redis-server did not start: {self.proc.stderr.read().decode()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()

    def keys(self, pattern: str = "*") -> list[str]:
        import redis
        client = redis.Redis(port=self.port, socket_timeout=2, decode_responses=True)
        try:
            return sorted(client.keys(pattern))
        finally:
            client.close()
