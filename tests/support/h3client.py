"""An HTTP/3 client for the tests, run as a subprocess (aioquic's client is asyncio; the tests
run under gevent): ``python -m tests.support.h3client URL [options]`` prints one JSON object
per request: status, headers, body length and sha256 (or the body itself with ``--show``).

Options: ``--ca FILE`` (trust only it), ``--sni NAME``, ``--method M``, ``--upload N`` (N
deterministic bytes as the body), ``--repeat K`` (K requests on one connection), ``--authority A``
``--timeout S``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import ssl
import sys
from urllib.parse import urlparse

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, StreamReset

from tests.support.http_backend import pattern


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.waiters: dict[int, asyncio.Future] = {}
        self.results: dict[int, dict] = {}
        self.hashes: dict[int, hashlib._Hash] = {}
        self.bodies: dict[int, bytearray] = {}
        self.show = False
        self.terminated: str | None = None

    def quic_event_received(self, event) -> None:
        if isinstance(event, ConnectionTerminated):
            self.terminated = f"{event.error_code}:{event.reason_phrase}"
            for fut in self.waiters.values():
                if not fut.done():
                    fut.set_exception(ConnectionError(self.terminated))
        if isinstance(event, StreamReset) and event.stream_id in self.waiters:
            fut = self.waiters[event.stream_id]
            if not fut.done():
                fut.set_exception(ConnectionError(f"stream reset {event.error_code}"))
        for ev in self.h3.handle_event(event):
            sid = ev.stream_id
            res = self.results.get(sid)
            if res is None:
                continue
            if isinstance(ev, HeadersReceived):
                if "status" in res:
                    res["trailers"] = [[k.decode(), v.decode()] for k, v in ev.headers]
                else:
                    res["headers"] = [[k.decode(), v.decode()] for k, v in ev.headers]
                    res["status"] = int(dict(ev.headers)[b":status"])
            elif isinstance(ev, DataReceived):
                res["length"] += len(ev.data)
                self.hashes[sid].update(ev.data)
                if self.show:
                    self.bodies[sid] += ev.data
            if getattr(ev, "stream_ended", False) and not self.waiters[sid].done():
                res["sha256"] = self.hashes[sid].hexdigest()
                if self.show:
                    res["body"] = self.bodies[sid].decode("latin-1")
                self.waiters[sid].set_result(res)

    async def request(self, method: str, url: str, authority: str, body: bytes | None) -> dict:
        u = urlparse(url)
        sid = self._quic.get_next_available_stream_id()
        headers = [(b":method", method.encode()), (b":scheme", b"https"), (b":authority", authority.encode()),
                   (b":path", (u.path or "/").encode() + (b"?" + u.query.encode() if u.query else b""))]
        if body is not None:
            headers.append((b"content-length", str(len(body)).encode()))
        self.results[sid] = {"length": 0}
        self.hashes[sid] = hashlib.sha256()
        self.bodies[sid] = bytearray()
        self.waiters[sid] = asyncio.get_running_loop().create_future()
        self.h3.send_headers(sid, headers, end_stream=not body)
        if body:
            view = memoryview(body)
            for off in range(0, len(body), 65536):
                self.h3.send_data(sid, bytes(view[off:off + 65536]), end_stream=off + 65536 >= len(body))
                self.transmit()
                await asyncio.sleep(0)
        self.transmit()
        return await self.waiters[sid]


async def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--ca")
    p.add_argument("--sni")
    p.add_argument("--method", default="GET")
    p.add_argument("--upload", type=int)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--show", action="store_true")
    p.add_argument("--authority")
    a = p.parse_args()
    u = urlparse(a.url)
    config = QuicConfiguration(is_client=True, alpn_protocols=list(H3_ALPN), server_name=a.sni or u.hostname)
    config.max_stream_data = config.max_data = 8 * 1024 * 1024
    if a.ca:
        config.load_verify_locations(a.ca)
    else:
        config.verify_mode = ssl.CERT_NONE
    body = pattern(a.upload) if a.upload is not None else None
    authority = a.authority or (a.sni or u.hostname) + (f":{u.port}" if u.port else "")
    try:
        async with connect(u.hostname, u.port or 443, configuration=config, create_protocol=Client,
                           wait_connected=True) as client:
            client.show = a.show
            for _ in range(a.repeat):
                res = await asyncio.wait_for(client.request(a.method, a.url, authority, body), a.timeout)
                print(json.dumps(res), flush=True)
    except Exception as exc:  # noqa: BLE001 - reported to the test as JSON
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
