"""External plugin over a unix socket: the same HTTP POST, to ``"unix": "/run/x.sock"``."""

from __future__ import annotations

import http.client
import socket

from .base import ExternalPlugin
from .http import HttpPlugin


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


class UnixPlugin(HttpPlugin):
    def __init__(self, node, env) -> None:
        ExternalPlugin.__init__(self, node, env)  # no URL to parse
        self.path = "/"
        self.unix_path = self.options["unix"]

    def connection(self) -> http.client.HTTPConnection:
        return _UnixConnection(self.unix_path, self.timeout)
