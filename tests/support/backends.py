"""Loopback TCP and UDP servers for tests, and what they do with a connection: echo, a banner
then echo (``tagged``), record everything (``recorder``), greet over TLS (``tls_greeter``).

A server runs each connection in a greenlet of its own and remembers what the tests ask about
(connections accepted, peers, data received); ``close()`` stops it and its connections.
"""

from __future__ import annotations

import socket
import ssl
from typing import Callable

import gevent
from gevent.pool import Group

from .net import recv_all, recv_line


class TcpServer:
    """A loopback TCP server running ``handler(server, conn)`` per connection in a greenlet."""

    def __init__(self, handler: Callable[["TcpServer", socket.socket], None], name: str = "",
                 host: str = "127.0.0.1") -> None:
        self.handler = handler
        self.name = name
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.target = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        self.accepted = 0
        self.peers: list[tuple] = []
        self.received: list[bytes] = []
        self._group = Group()
        self._loop = gevent.spawn(self._accept)

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.peers.append(peer)
            self._group.spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.handler(self, conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._loop.kill(block=False)
        self._group.kill(block=False)
        self.sock.close()


def echo(server: TcpServer, conn: socket.socket) -> None:
    """Echo until EOF, then half-close."""
    while True:
        data = conn.recv(262144)
        if not data:
            break
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)


def tagged(tag: bytes) -> Callable[[TcpServer, socket.socket], None]:
    """Say ``tag`` + CRLF first, then echo (an SSH-like banner, or a backend's name)."""
    def handler(server: TcpServer, conn: socket.socket) -> None:
        conn.sendall(tag + b"\r\n")
        echo(server, conn)
    return handler


def recorder(server: TcpServer, conn: socket.socket) -> None:
    """Keep everything received until EOF, then answer ``ok``."""
    conn.settimeout(5)
    server.received.append(recv_all(conn))
    conn.sendall(b"ok")


class UdpEcho:
    """Answers each datagram with ``echo:`` + the datagram; remembers the source addresses."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.target = f"127.0.0.1:{self.port}"
        self.sources: list[tuple] = []
        self._loop = gevent.spawn(self._run)

    def _run(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
                self.sources.append(addr)
                self.sock.sendto(b"echo:" + data, addr)
            except OSError:
                return

    def close(self) -> None:
        self._loop.kill(block=False)
        self.sock.close()


def tls_greeter(ctx: ssl.SSLContext, name: bytes) -> Callable[[TcpServer, socket.socket], None]:
    """A TLS server: read one line, answer ``name:`` + the line, close."""
    def handler(server: TcpServer, conn: socket.socket) -> None:
        conn.settimeout(5)
        tls = ctx.wrap_socket(conn, server_side=True)
        try:
            line = recv_line(tls)
            server.received.append(line)
            tls.sendall(name + b":" + line)
        except (OSError, ssl.SSLError):
            pass
        finally:
            tls.close()
    return handler
