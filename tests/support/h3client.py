"""An HTTP/3 client for the tests, run as a subprocess (aioquic's client is asyncio; the tests
run under gevent): ``python -m tests.support.h3client URL [options]`` prints one JSON object
per request: status, headers, body length and sha256 (or the body itself with ``--show``).

Options: ``--ca FILE`` (trust only it), ``--sni NAME``, ``--method M``, ``--upload N`` (N
deterministic bytes as the body), ``--repeat K`` (K requests on one connection), ``--authority A``
(the ``:authority``), ``--ws N``: a WebSocket by extended CONNECT (RFC 9220) to the URL's path,
one binary message of N random bytes and a close with code 4001; prints the status, whether
the echo came back intact and the close code the server sent back. ``--header-bytes N``: extra
request fields ``x-big-<i>`` of N letters in all (at most 60,000 a field). ``--settings``: print the server's HTTP/3
SETTINGS (``{"settings": {id: value}}``) after the requests. ``--expect``: with ``--upload``,
send ``Expect: 100-continue`` and the body only once a 100 came (``interim`` lists the 1xx
statuses seen). ``--control-junk N``: first N bytes of an unfinished MAX_PUSH_ID frame on the
client's control stream.
``--rebind``: before each request after the first, send from a new UDP port (a NAT
rebinding; each result then has ``port``); with ``--new-cid`` also switch to a fresh connection
ID the server issued (an active migration). ``--ids``: print the connection ID the client
sends to, its stateless-reset token and whether the server sent a Retry first
(``{"cid": hex, "token": hex, "retried": bool}``) after the requests.
``--timeout S``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import socket
import ssl
import struct
import sys
import time
from urllib.parse import urlparse

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, StreamReset

from tests.support.http_backend import pattern
from tests.support.wsframes import client_frame, server_frame


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
                status = int(dict(ev.headers).get(b":status", b"0"))
                if "status" not in res and 100 <= status < 200:
                    res.setdefault("interim", []).append(status)
                    continue
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

    async def websocket(self, url: str, authority: str, size: int) -> dict:
        u = urlparse(url)
        sid = self._quic.get_next_available_stream_id()
        loop = asyncio.get_running_loop()
        self.results[sid] = {"length": 0}
        self.hashes[sid] = hashlib.sha256()
        self.bodies[sid] = bytearray()
        self.show = True
        self.waiters[sid] = loop.create_future()
        self.h3.send_headers(sid, [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"),
                                   (b":authority", authority.encode()), (b":path", (u.path or "/").encode()),
                                   (b"sec-websocket-version", b"13")])
        self.transmit()
        res = self.results[sid]
        while "status" not in res:
            await asyncio.sleep(0.01)
        if res["status"] != 200:
            return await self.waiters[sid]
        message = os.urandom(size)
        frame = client_frame(0x2, message)
        for off in range(0, len(frame), 65536):
            self.h3.send_data(sid, frame[off:off + 65536], end_stream=False)
            self.transmit()
            await asyncio.sleep(0)
        buf = self.bodies[sid]
        got = None
        while got is None:
            got = server_frame(buf)
            if got is None:
                await asyncio.sleep(0.01)
        res["echo_ok"] = got == (0x2, message)
        self.h3.send_data(sid, client_frame(0x8, struct.pack("!H", 4001) + b"bye"), end_stream=False)
        self.transmit()
        got = None
        while got is None:
            got = server_frame(buf)
            if got is None:
                await asyncio.sleep(0.01)
        res["close_code"] = struct.unpack("!H", got[1][:2])[0] if got[0] == 0x8 else None
        await self.waiters[sid]             # the backend closed: the stream ends
        res.pop("body", None)
        return res

    async def request(self, method: str, url: str, authority: str, body: bytes | None,
                      extra: list[tuple[bytes, bytes]] = (), expect: bool = False) -> dict:
        if self.terminated:
            raise ConnectionError(self.terminated)
        u = urlparse(url)
        sid = self._quic.get_next_available_stream_id()
        headers = [(b":method", method.encode()), (b":scheme", b"https"), (b":authority", authority.encode()),
                   (b":path", (u.path or "/").encode() + (b"?" + u.query.encode() if u.query else b""))]
        if body is not None:
            headers.append((b"content-length", str(len(body)).encode()))
        headers += extra
        if expect and body:
            headers.append((b"expect", b"100-continue"))
        self.results[sid] = {"length": 0}
        self.hashes[sid] = hashlib.sha256()
        self.bodies[sid] = bytearray()
        self.waiters[sid] = asyncio.get_running_loop().create_future()
        self.h3.send_headers(sid, headers, end_stream=not body)
        if expect and body:         # the body only after the server's 100 (Continue)
            self.transmit()
            while not self.results[sid].get("interim") and "status" not in self.results[sid]:
                await asyncio.sleep(0.01)
            if "status" in self.results[sid]:
                return await self.waiters[sid]
        if body:
            view = memoryview(body)
            for off in range(0, len(body), 65536):
                self.h3.send_data(sid, bytes(view[off:off + 65536]), end_stream=off + 65536 >= len(body))
                self.transmit()
                await asyncio.sleep(0)
        self.transmit()
        return await self.waiters[sid]


async def rebind(client: Client, new_cid: bool) -> None:
    """Go on from a new local port, as behind a NAT that rebound (the old socket is dropped)."""
    old = client._transport
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", 0, 0, 0))
    await asyncio.get_running_loop().create_datagram_endpoint(lambda: client, sock=sock)
    old.close()
    if new_cid:
        client._quic.change_connection_id()


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
    p.add_argument("--ws", type=int)
    p.add_argument("--header-bytes", type=int)
    p.add_argument("--settings", action="store_true")
    p.add_argument("--expect", action="store_true")
    p.add_argument("--control-junk", type=int)
    p.add_argument("--rebind", action="store_true")
    p.add_argument("--new-cid", action="store_true")
    p.add_argument("--ids", action="store_true")
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
            if a.ws is not None:
                res = await asyncio.wait_for(client.websocket(a.url, authority, a.ws), a.timeout)
                print(json.dumps(res), flush=True)
                return 0
            if a.control_junk:      # the start of a MAX_PUSH_ID frame twice that long, never finished
                size = a.control_junk
                frame = b"\x0d" + (0x80000000 | (2 * size)).to_bytes(4, "big") + b"\x00" * size
                client._quic.send_stream_data(client.h3._local_control_stream_id, frame)
                client.transmit()
                await asyncio.sleep(0.5)
            extra = [(b"x-big-%d" % i, b"a" * min(60000, a.header_bytes - off))
                     for i, off in enumerate(range(0, a.header_bytes or 0, 60000))]
            for i in range(a.repeat):
                if a.rebind and i:
                    await rebind(client, a.new_cid)
                res = await asyncio.wait_for(client.request(a.method, a.url, authority, body, extra, a.expect),
                                             a.timeout)
                if a.rebind:
                    res["port"] = client._transport.get_extra_info("sockname")[1]
                res["t"] = time.monotonic()     # when the answer was complete (rates from the client's clock)
                print(json.dumps(res), flush=True)
            if a.ids:
                peer = client._quic._peer_cid
                print(json.dumps({"cid": peer.cid.hex(), "token": peer.stateless_reset_token.hex(),
                                  "retried": client._quic._retry_source_connection_id is not None}), flush=True)
            if a.settings:
                got = client.h3._received_settings or {}
                print(json.dumps({"settings": {str(int(k)): v for k, v in got.items()}}), flush=True)
    except Exception as exc:  # noqa: BLE001 - reported to the test as JSON
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
