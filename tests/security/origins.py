"""A real nginx as the origin server behind vaned, and raw-socket HTTP helpers for attacks.

nginx comes from Debian (`nginx-light`; CI installs it). Its access log records every request
it served, so a test can tell exactly what reached the origin.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import gevent
import httptools
import pytest

from tests.daemon_helpers import free_port

NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
error_log {dir}/error.log info;
pid {dir}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    log_format main '$request_method $request_uri host=$http_host upgrade=$http_upgrade len=$content_length';
    access_log {dir}/access.log main;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000;
    keepalive_timeout 60s;
    server {{
        listen 127.0.0.1:{port};
        location = /admin {{ return 200 "ADMIN SECRET\\n"; }}
        location /ws {{ return 200 "no websocket here\\n"; }}
        location / {{ return 200 "origin $uri\\n"; }}
    }}
}}
"""


def nginx_binary() -> str:
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is not installed (.ci/run installs nginx-light)")
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    return path


class Nginx:
    """nginx serving ``/admin`` (a secret), ``/ws`` and everything else, with an access log."""

    def __init__(self, base: Path) -> None:
        self.dir = base
        base.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = base / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=base, port=self.port))
        self.proc = subprocess.Popen([nginx_binary(), "-c", str(conf), "-p", str(base)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not start: {self.proc.stderr.read().decode()}") from None
                gevent.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[str]:
        """Access-log lines so far (nginx writes each when its request ends)."""
        path = self.dir / "access.log"
        return path.read_text().splitlines() if path.exists() else []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# -- raw HTTP -------------------------------------------------------------------------------------

def connect(port: int, source: str = "127.0.0.1", timeout: float = 5.0) -> socket.socket:
    """A TCP connection to 127.0.0.1:``port`` from the loopback address ``source``."""
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    return sock


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


class _Responses:
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
    with connect(port, source) as sock:
        sock.sendall(data)
        return parse_responses(read_for(sock, seconds))
