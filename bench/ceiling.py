#!/usr/bin/env python3
"""The ceiling of the stack vaned is built on: gevent + httptools, no routing, no flow, no pool.

    ceiling.py --proxy PORT --backend HOST:PORT      # HTTP/1.1 keep-alive pass-through
    ceiling.py --respond PORT                        # answers every request with "hello"

One greenlet per client connection. The pass-through opens one backend connection per client
connection and keeps it: it parses each request head with httptools, sends the request line
and the headers on (body included, Content-Length only), parses the response head with
httptools and sends it and its body back. No validation beyond the parser's, no timeouts, no
pool, no headers added or removed: the least an HTTP proxy on this stack can do per request.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import socket  # noqa: E402

import httptools  # noqa: E402
from gevent.server import StreamServer  # noqa: E402


class _Message:
    __slots__ = ("parser", "head", "body", "done", "url")

    def __init__(self, parser_cls) -> None:
        self.parser = parser_cls(self)
        self.head: list[bytes] = []
        self.body: list[bytes] = []
        self.done = False
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head += (name, b": ", value, b"\r\n")

    def on_body(self, data: bytes) -> None:
        self.body.append(data)

    def on_message_complete(self) -> None:
        self.done = True


def _read(sock: socket.socket, msg: _Message) -> bool:
    while not msg.done:
        data = sock.recv(65536)
        if not data:
            return False
        msg.parser.feed_data(data)
    return True


def proxy(backend: tuple[str, int]):
    def handle(client: socket.socket, _addr) -> None:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        up = socket.create_connection(backend)
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                req = _Message(httptools.HttpRequestParser)
                if not _read(client, req):
                    return
                method = req.parser.get_method()
                up.sendall(b"".join([method, b" ", req.url, b" HTTP/1.1\r\n", *req.head, b"\r\n", *req.body]))
                resp = _Message(httptools.HttpResponseParser)
                if not _read(up, resp):
                    return
                status = resp.parser.get_status_code()
                client.sendall(b"".join([b"HTTP/1.1 %d OK\r\n" % status, *resp.head, b"\r\n", *resp.body]))
        except OSError:
            pass
        finally:
            up.close()
            client.close()
    return handle


ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"


def respond(client: socket.socket, _addr) -> None:
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            req = _Message(httptools.HttpRequestParser)
            if not _read(client, req):
                return
            client.sendall(ANSWER)
    except OSError:
        pass
    finally:
        client.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--proxy", type=int, metavar="PORT")
    p.add_argument("--backend", metavar="HOST:PORT")
    p.add_argument("--respond", type=int, metavar="PORT")
    args = p.parse_args()
    servers = []
    if args.proxy:
        host, _, port = args.backend.rpartition(":")
        servers.append(StreamServer(("127.0.0.1", args.proxy), proxy((host, int(port))), backlog=1024))
    if args.respond:
        servers.append(StreamServer(("127.0.0.1", args.respond), respond, backlog=1024))
    for server in servers:
        server.start()
    servers[0].serve_forever()


if __name__ == "__main__":
    main()
