"""The transport-level context (seed 000: L4 context): a socket, its peek buffer and KV.

``conn.*`` and ``listen.*`` are set at accept; ``peek.*`` and the offered ``tls.*`` keys are
lazy — the first node that reads one peeks (MSG_PEEK, bounded in size and time) without
consuming a byte. After ``upgrade tls`` the context for ``l4+`` carries the decrypted stream
and the negotiated ``tls.*`` values.
"""

from __future__ import annotations

import time
from typing import Any

from vane.engine.context import Context
from vane.engine.ids import uuid7
from vane.engine.kv import KV
from vane.net.clienthello import ClientHelloError, needed_bytes, parse_client_hello
from vane.net.dial import unmapped
from vane.net.peek import classify, classify_datagram, peek
from vane.net.sockets import reset

MAX_PEEK = 16 * 1024 + 5      # one TLS record: enough for any ordinary ClientHello
CLASSIFY_BYTES = 4096


class L4Context(Context):
    __slots__ = ("_stream", "peer", "local", "listener", "conn", "services", "datagram",
                 "udp", "peek_timeout", "_peeked", "_hello_done")

    def __init__(self, conn: Any, peer: tuple, local: tuple, listener: str, proto: str = "tcp",
                 services: Any = None, peek_timeout: float = 10.0, conn_id: str | None = None,
                 datagram: bytes | None = None) -> None:
        conn_id = conn_id or uuid7()
        kv = KV({
            "conn.uuid": conn_id, "conn.ip": unmapped(peer[0]), "conn.port": str(peer[1]), "conn.proto": proto,
            "conn.timestamp": str(int(time.time())), "conn.layer": "l4",
            "listen.ip": unmapped(local[0]), "listen.port": str(local[1]),
        })
        super().__init__("l4", kv, conn_id)
        kv.set_lazy(self._lazy)
        self._stream: Any = None      # the stream of an upgraded layer (TLS); None: the socket
        self.peer = peer
        self.local = local
        self.listener = listener
        self.conn = conn              # the Connection: the client socket, accounting, parking
        self.services = services
        self.datagram = datagram      # UDP: the first datagram of the session
        self.udp: Any = None          # UDP: the session the listener feeds
        self.peek_timeout = peek_timeout
        self._peeked: bytes | None = None
        self._hello_done = False

    # -- the client's bytes -------------------------------------------------------------------

    @property
    def sock(self) -> Any:
        """The client connection, for blocking calls (a ``PlainStream``; UDP: the listener's
        socket). Not after ``upgrade tls``: the TLS stream owns the socket as accepted."""
        return self.conn.socket()

    @property
    def stream(self) -> Any:
        """What upgrade and proxy read from and write to: a TLS stream, or the socket."""
        stream = self._stream
        return stream if stream is not None else self.conn.socket()

    @property
    def relay_stream(self) -> Any:
        """``stream`` for a relay, which takes a plain connection as the bare kernel socket."""
        stream = self._stream
        return stream if stream is not None else self.conn.bare()

    def reset_client(self) -> None:
        """Close the client's TCP connection with a reset (as the kernel socket: no stream needed)."""
        reset(self.conn.bare())

    # -- peeking -------------------------------------------------------------------------------

    def peeked(self) -> bytes:
        """The first bytes of the stream (or the first datagram), without consuming them."""
        if self._peeked is None:
            if self.datagram is not None:
                self._peeked = self.datagram
            elif self.layer != "l4":
                self._peeked = b""  # after TLS the plaintext is not peekable; detect says unknown
            else:
                self._peeked = peek(self.sock, CLASSIFY_BYTES, self.peek_timeout)
        return self._peeked

    def read_from_now(self) -> None:
        """A codec consumes the plaintext stream from here on: nothing is peekable any more
        (``peek.*`` keeps what was seen before, if anything) and no ClientHello came (the
        offered ``tls.*`` keys are empty unless an earlier node had them read)."""
        if self._peeked is None:
            self._peeked = b""
        if not self._hello_done:
            self._client_hello()

    def protocol(self) -> str:
        data = self.peeked()
        if self.datagram is not None:
            proto = classify_datagram(data)
        else:
            proto = classify(data) or "unknown"
        kv = self.kv
        kv.set("peek.protocol", proto)
        kv.set("peek.len", str(len(data)))
        kv.set("peek.hex", data[:64].hex())
        return proto

    def _client_hello(self) -> None:
        self._hello_done = True
        kv = self.kv
        for key in ("tls.sni", "tls.alpn", "tls.version", "tls.cipher"):
            kv.set(key, "")
        if self.datagram is not None or self.layer != "l4":
            return
        data = self.peeked()
        if classify(data) != "tls":
            return
        if needed_bytes(data) > len(data):
            data = peek(self.sock, MAX_PEEK, self.peek_timeout,
                        want=lambda d: needed_bytes(d) <= len(d) or len(d) >= MAX_PEEK)
            self._peeked = data
        try:
            hello = parse_client_hello(data)
        except ClientHelloError:
            return
        if hello is None:
            return
        kv.set("tls.sni", hello.sni or "")
        kv.set("tls.alpn", ",".join(hello.alpn))
        kv.set("tls.version", hello.version_str)

    def _lazy(self, key: str) -> str | None:
        if key.startswith("peek."):
            if key in ("peek.protocol", "peek.len", "peek.hex"):
                self.protocol()
                return self.kv._d.get(key)
            return None
        if key.startswith("tls.") and not self._hello_done:
            self._client_hello()
            return self.kv._d.get(key)
        return None

    def upgraded(self, stream: Any, layer: str = "l4+") -> "L4Context":
        """A context for the next layer over ``stream`` (same connection, same KV copy)."""
        new = L4Context.__new__(L4Context)
        Context.__init__(new, layer, self.kv.child(), self.conn_id, self.trajectory)
        new.peer = self.peer
        new.local = self.local
        new.listener = self.listener
        new.conn = self.conn
        new.services = self.services
        new.datagram = self.datagram
        new.udp = self.udp
        new.peek_timeout = self.peek_timeout
        new._stream = stream
        new._peeked = None
        new._hello_done = True
        new.rule = self.rule
        new.on_step = self.on_step
        new.kv.set("conn.layer", layer)
        return new
