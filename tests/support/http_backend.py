"""The HTTP backend of the tests: a real server on loopback (or on a unix socket).

``Backend`` is a small gevent HTTP/1.1 server written on httptools, independent of vane's own
codecs. Routes: ``/echo`` (the body back; ``?chunked=1`` answers chunked), ``/hash`` (sha256
and length of the body), ``/data?n=N`` (N deterministic bytes; ``chunked=1``), ``/sleep?s=X``,
``/headers`` (the request as JSON), ``/status?code=N``, ``/ws`` (RFC 6455 echo); anything else
answers ``<name> <path>``. It counts connections and requests; ``kill`` drops every connection
at once, as a crashed backend would. ``tls=`` serves HTTPS;
``h2=True`` serves HTTP/2 (h2c prior knowledge, or h2 by ALPN over TLS) through vane's own
HTTP/2 server codec, for the upstream HTTP/2 tests.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import ssl
import struct
from typing import Any
from urllib.parse import parse_qs

import gevent
import httptools
from gevent.server import StreamServer

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

_BLOCK = hashlib.sha256(b"vane").digest() * 2048           # 64 KiB, deterministic


def pattern(n: int) -> bytes:
    """The ``n`` bytes ``/data?n=`` answers with."""
    reps = n // len(_BLOCK) + 1
    return (_BLOCK * reps)[:n]


class _Req:
    __slots__ = ("method", "url", "path", "query", "headers", "body", "done", "upgrade", "headers_done")

    def __init__(self) -> None:
        self.method = ""
        self.url = b""
        self.path = ""
        self.query: dict[str, list[str]] = {}
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.done = False
        self.upgrade = False
        self.headers_done = False

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


class _Parser:
    """httptools callbacks collecting complete requests in order."""

    def __init__(self) -> None:
        self.ready: list[_Req] = []
        self.cur = _Req()
        self.parser = httptools.HttpRequestParser(self)

    def on_url(self, url: bytes) -> None:
        self.cur.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.cur.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        cur = self.cur
        cur.method = self.parser.get_method().decode()
        path, _, query = cur.url.decode("latin-1").partition("?")
        cur.path, cur.query = path, parse_qs(query)
        cur.headers_done = True

    def on_body(self, data: bytes) -> None:
        self.cur.body.append(bytes(data))

    def on_message_complete(self) -> None:
        self.cur.done = True
        self.ready.append(self.cur)
        self.cur = _Req()


class Backend:
    """A loopback HTTP backend; see the module docstring for its routes."""

    def __init__(self, name: str = "backend", tls: ssl.SSLContext | None = None, h2: bool = False,
                 unix_path: str | None = None) -> None:
        self.name = name
        self.tls = tls
        self.h2 = h2
        self.connections = 0
        self.requests = 0
        self.streamed = 0       # bytes the streamed /data answers handed to the server so far
        self.seen: list[dict] = []
        self.errors: list[BaseException] = []
        self._open: set[socket.socket] = set()
        if unix_path is not None:
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(unix_path)
            listener.listen(128)
            self.server = StreamServer(listener, self._handle)
            self.port = 0
        else:
            self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()
        if unix_path is None:
            self.port = self.server.server_port
        self.unix_path = unix_path

    @property
    def url(self) -> str:
        if self.unix_path:
            return f"unix:{self.unix_path}"
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(timeout=1)

    def kill(self) -> None:
        """Die like a crashed process: stop listening and reset every open connection."""
        self.server.stop(timeout=0)
        for sock in list(self._open):
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            except OSError:
                pass
        self._open.clear()

    # -- connections -----------------------------------------------------------------------------

    def _handle(self, sock: socket.socket, addr: Any) -> None:
        self.connections += 1
        conn_id = self.connections
        stream = sock
        self._open.add(sock)
        try:
            if self.tls is not None:
                try:
                    stream = self.tls.wrap_socket(sock, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    self.errors.append(exc)
                    return
            if self.h2:
                self._serve_h2(stream, conn_id)
            else:
                self._serve_h1(stream, conn_id)
        except (OSError, ssl.SSLError):
            pass
        finally:
            self._open.discard(sock)
            try:
                stream.close()
            except OSError:
                pass

    def _serve_h1(self, sock: Any, conn_id: int) -> None:
        p = _Parser()
        sock.settimeout(30)
        while True:
            while not p.ready:
                data = sock.recv(65536)
                if not data:
                    return
                try:
                    p.parser.feed_data(data)
                except httptools.HttpParserUpgrade as exc:
                    cur = p.ready.pop(0) if p.ready else p.cur
                    cur.done = True
                    cur.upgrade = True
                    self.requests += 1
                    if cur.path != "/ws":
                        sock.sendall(b"HTTP/1.1 400 No\r\ncontent-length: 17\r\nconnection: close\r\n\r\n"
                                     b"no websocket here")
                        return
                    self._websocket(sock, cur, data[exc.args[0]:])
                    return
            req = p.ready.pop(0)
            self.requests += 1
            keep = self._respond_h1(sock, req, conn_id)
            if not keep or not p.parser.should_keep_alive():
                return

    def _respond_h1(self, sock: Any, req: _Req, conn_id: int) -> bool:
        status, headers, body, chunked = self.app(req.method, req.path, req.query, req.headers, req.body, conn_id)
        head = [f"HTTP/1.1 {status} X\r\n".encode()]
        for k, v in headers:
            head.append(f"{k}: {v}\r\n".encode("latin-1"))
        if req.method == "HEAD" or status in (204, 304):
            length = len(body) if isinstance(body, bytes) else None
            if length is not None and req.method == "HEAD":
                head.append(f"content-length: {length}\r\n".encode())
            sock.sendall(b"".join(head) + b"\r\n")
            return True
        if isinstance(body, bytes) and not chunked:
            head.append(f"content-length: {len(body)}\r\n\r\n".encode())
            sock.sendall(b"".join(head) + body)
            return True
        chunks = [body] if isinstance(body, bytes) else body
        if chunked:
            head.append(b"transfer-encoding: chunked\r\n\r\n")
            sock.sendall(b"".join(head))
            for chunk in chunks:
                if chunk:
                    sock.sendall(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            sock.sendall(b"0\r\n\r\n")
            return True
        head.append(b"connection: close\r\n\r\n")       # close-delimited
        sock.sendall(b"".join(head))
        for chunk in chunks:
            sock.sendall(chunk)
        return False

    def _serve_h2(self, stream: Any, conn_id: int) -> None:
        from vane.net.h2.server import H2ServerConnection
        from vane.net.http.message import Body, Headers, Response

        def handle(request: Any) -> Response:
            self.requests += 1
            query = parse_qs(request.query)
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.items_]
            headers.append(("host", request.authority))
            body = list(request.body)
            status, out, data, _ = self.app(request.method, request.path, query, headers, body, conn_id)
            hl = Headers([(k.encode(), str(v).encode()) for k, v in out])
            if isinstance(data, bytes):
                return Response(status, hl, Body.from_bytes(data))
            return Response(status, hl, Body(data))

        H2ServerConnection(stream, handle).serve()

    # -- routes ----------------------------------------------------------------------------------

    def app(self, method: str, path: str, query: dict, headers: list, body: list[bytes],
            conn_id: int) -> tuple[int, list, Any, bool]:
        chunked = query.get("chunked", ["0"])[0] == "1"
        common = [("x-backend", self.name), ("x-backend-conn", str(conn_id))]
        hdict = {k: v for k, v in headers}
        self.seen.append({"method": method, "path": path, "headers": headers})
        if len(self.seen) > 200:
            del self.seen[:100]
        if path == "/echo":
            ctype = hdict.get("content-type", "application/octet-stream")
            return 200, common + [("content-type", ctype)], b"".join(body), chunked
        if path == "/hash":
            h = hashlib.sha256()
            n = 0
            for part in body:
                h.update(part)
                n += len(part)
            info = {"sha256": h.hexdigest(), "length": n, "method": method,
                    "chunked": "transfer-encoding" in hdict, "content_length": hdict.get("content-length")}
            return 200, common + [("content-type", "application/json")], json.dumps(info).encode(), chunked
        if path == "/data":
            n = int(query.get("n", ["0"])[0])
            data = pattern(n)
            if chunked or query.get("stream", ["0"])[0] == "1":
                return 200, common, self._counted(data[i:i + 65536] for i in range(0, n, 65536)), chunked
            return 200, common, data, False
        if path == "/sleep":
            gevent.sleep(float(query.get("s", ["1"])[0]))
            return 200, common, b"slept", chunked
        if path == "/headers":
            info = {"method": method, "path": path, "query": query, "headers": headers}
            return 200, common + [("content-type", "application/json")], json.dumps(info).encode(), chunked
        if path == "/status":
            code = int(query.get("code", ["200"])[0])
            return code, common + [("x-status", str(code))], b"" if code in (204, 304) else f"status {code}".encode(), \
                chunked
        if path == "/hop":
            return 200, common + [("connection", "x-secret, keep-alive"), ("x-secret", "1"), ("keep-alive", "timeout=5"),
                                  ("proxy-authenticate", "Basic"), ("x-kept", "yes")], b"hop", chunked
        return 200, common + [("content-type", "text/plain")], f"{self.name} {path}".encode(), chunked

    def _counted(self, chunks: Any) -> Any:
        for chunk in chunks:
            self.streamed += len(chunk)
            yield chunk

    # -- WebSocket echo --------------------------------------------------------------------------

    def _websocket(self, sock: Any, req: _Req, rest: bytes) -> None:
        key = req.header("sec-websocket-key") or ""
        accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
        sock.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Accept: {accept}\r\nX-Backend: {self.name}\r\n\r\n").encode())
        buf = bytearray(rest)

        def need(n: int) -> bytes:
            while len(buf) < n:
                data = sock.recv(65536)
                if not data:
                    raise EOFError
                buf.extend(data)
            out = bytes(buf[:n])
            del buf[:n]
            return out

        try:
            while True:
                b0, b1 = need(2)
                opcode = b0 & 0x0F
                length = b1 & 0x7F
                if length == 126:
                    length = struct.unpack("!H", need(2))[0]
                elif length == 127:
                    length = struct.unpack("!Q", need(8))[0]
                mask = need(4) if b1 & 0x80 else b"\0\0\0\0"
                payload = bytes(c ^ mask[i % 4] for i, c in enumerate(need(length)))
                if opcode == 0x8:
                    sock.sendall(_ws_frame(0x8, payload[:2]))
                    return
                if opcode == 0x9:
                    sock.sendall(_ws_frame(0xA, payload))
                    continue
                sock.sendall(_ws_frame(opcode, payload))
        except EOFError:
            return


def _ws_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload
