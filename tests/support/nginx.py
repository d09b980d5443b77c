"""A real nginx as the origin server behind vaned.

nginx comes from Debian (`nginx-light`; CI installs it). Its access log records every request
it served, so a test can tell exactly what reached the origin.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .net import accepts, free_port, wait_until

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
        up = wait_until(lambda: accepts(self.port, timeout=0.5) or self.proc.poll() is not None, 10, interval=0.05)
        if not up or self.proc.poll() is not None:
            raise RuntimeError(f"nginx did not start: {self.proc.stderr.read().decode()}")

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
