"""External plugin over HTTP: POST the JSON contract to a URL (``"http": "http://..."``)."""

from __future__ import annotations

import http.client
import urllib.parse

from .base import MAX_REPLY, ExternalError, ExternalPlugin


class HttpPlugin(ExternalPlugin):
    def __init__(self, node, env) -> None:
        super().__init__(node, env)
        url = urllib.parse.urlsplit(self.options["http"])
        self.https = url.scheme == "https"
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or (443 if self.https else 80)
        self.path = (url.path or "/") + (f"?{url.query}" if url.query else "")

    def connection(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=self.timeout)

    def call(self, data: bytes) -> bytes:
        conn = self.connection()
        try:
            conn.request("POST", self.path, body=data, headers={"content-type": "application/json"})
            resp = conn.getresponse()
            body = resp.read(MAX_REPLY + 1)
            if resp.status != 200:
                raise ExternalError(f"HTTP {resp.status}")
            return body
        finally:
            conn.close()
