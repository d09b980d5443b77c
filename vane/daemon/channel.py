"""The master↔worker control channel: one AF_UNIX socketpair per worker.

``Channel`` frames messages (a length, a descriptor count, a pickle) and carries descriptors
(listening sockets) with ``SCM_RIGHTS``. Both ends are processes of one daemon (the pair is
created before the fork and reaches no one else), so pickle is safe here and carries a compiled
graph as is. ``Peer`` runs calls over a channel: ``call`` sends a request and waits for its
answer with a timeout; incoming requests run in their own greenlet through a handler table;
``notify`` sends an event that needs no answer (flow-log entries, log records).
"""

from __future__ import annotations

import array
import logging
import pickle
import socket
import struct
from collections import deque
from typing import Any, Callable

import gevent
from gevent.event import AsyncResult
from gevent.lock import Semaphore

log = logging.getLogger("vane.daemon")

HEADER = struct.Struct("!IH")
MAX_FRAME = 1 << 30
MAX_FDS = 64
RECV_SIZE = 1 << 16


class ChannelClosed(Exception):
    """The other end went away."""


class CallFailed(Exception):
    """The other end answered a call with an error; ``kind`` names it."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


class Channel:
    """Owns one end of the socketpair: framed sends (one at a time) and framed receives."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send_lock = Semaphore()
        self._buf = bytearray()
        self._fds: deque[int] = deque()

    def send(self, message: Any, fds: list[int] | tuple[int, ...] = ()) -> None:
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        if len(payload) > MAX_FRAME or len(fds) > MAX_FDS:
            raise ValueError("control message too large")
        frame = HEADER.pack(len(payload), len(fds)) + payload
        with self._send_lock:
            try:
                if fds:
                    sent = self.sock.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                        array.array("i", fds))])
                    frame = frame[sent:]
                if frame:
                    self.sock.sendall(frame)
            except OSError as exc:
                raise ChannelClosed(str(exc)) from None

    def recv(self) -> tuple[Any, list[int]]:
        """The next message and the descriptors that came with it; ChannelClosed at the end."""
        buf = self._buf
        while True:
            if len(buf) >= HEADER.size:
                size, nfds = HEADER.unpack_from(buf)
                if size > MAX_FRAME:
                    raise ChannelClosed("oversized control frame")
                if len(buf) >= HEADER.size + size and len(self._fds) >= nfds:
                    payload = bytes(buf[HEADER.size:HEADER.size + size])
                    del buf[:HEADER.size + size]
                    fds = [self._fds.popleft() for _ in range(nfds)]
                    return pickle.loads(payload), fds
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(RECV_SIZE, socket.CMSG_SPACE(MAX_FDS * 4))
            except OSError as exc:
                raise ChannelClosed(str(exc)) from None
            for level, kind, cdata in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
                    self._fds.extend(fds)
            if not data:
                raise ChannelClosed("end of channel")
            buf += data

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
        for fd in self._fds:
            socket.close(fd)
        self._fds.clear()


Handler = Callable[..., Any]


class Peer:
    """Calls both ways over a ``Channel``. ``handlers`` maps an op to a function called with
    the request's keyword arguments (and ``fds=`` when descriptors came along); its return
    value is the answer, an exception is answered as ``CallFailed``. ``on_event(name, data)``
    receives notifications. ``on_close()`` runs once when the channel ends. With ``inline``,
    requests are answered one after the other in the reading greenlet (the spawner: a fork
    must not find another request half-answered in a greenlet of its own)."""

    def __init__(self, channel: Channel, handlers: dict[str, Handler],
                 on_event: Callable[[str, Any], None] | None = None,
                 on_close: Callable[[], None] | None = None, name: str = "peer", inline: bool = False) -> None:
        self.inline = inline
        self.channel = channel
        self.handlers = handlers
        self.on_event = on_event
        self.on_close = on_close
        self.name = name
        self.closed = False
        self._next = 0
        self._waiting: dict[int, AsyncResult] = {}
        self._reader: gevent.Greenlet | None = None

    def start(self) -> Peer:
        self._reader = gevent.spawn(self._read_loop)
        return self

    def call(self, op: str, timeout: float, fds: list[int] | tuple[int, ...] = (), **args: Any) -> Any:
        """Send ``op`` and wait for its answer; raises CallFailed, ChannelClosed or
        gevent.Timeout (the answer, if it comes later, is dropped)."""
        if self.closed:
            raise ChannelClosed(f"{self.name}: channel closed")
        self._next += 1
        ident = self._next
        result = self._waiting[ident] = AsyncResult()
        try:
            self.channel.send(("call", ident, op, args), fds)
            return result.get(timeout=timeout)
        finally:
            self._waiting.pop(ident, None)

    def notify(self, name: str, data: Any) -> None:
        if not self.closed:
            self.channel.send(("event", name, data))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.channel.close()
        for result in self._waiting.values():
            result.set_exception(ChannelClosed(f"{self.name}: channel closed"))
        self._waiting.clear()
        if self._reader is not None and self._reader is not gevent.getcurrent():
            self._reader.kill(block=False)
        if self.on_close is not None:
            self.on_close()

    def _read_loop(self) -> None:
        try:
            while True:
                message, fds = self.channel.recv()
                kind = message[0]
                if kind == "call":
                    if self.inline:
                        self._answer(message[1], message[2], message[3], fds)
                    else:
                        gevent.spawn(self._answer, message[1], message[2], message[3], fds)
                elif kind == "reply":
                    result = self._waiting.get(message[1])
                    if result is not None:
                        if message[2]:
                            result.set(message[3])
                        else:
                            result.set_exception(CallFailed(*message[3]))
                elif kind == "event" and self.on_event is not None:
                    try:
                        self.on_event(message[1], message[2])
                    except Exception:  # noqa: BLE001 - a bad event must not end the channel
                        log.exception("%s: event %s failed", self.name, message[1])
        except ChannelClosed:
            pass
        except gevent.GreenletExit:
            return
        except Exception:  # noqa: BLE001 - logged; the channel ends
            log.exception("%s: control channel failed", self.name)
        self.close()

    def _answer(self, ident: int, op: str, args: dict, fds: list[int]) -> None:
        handler = self.handlers.get(op)
        try:
            if handler is None:
                raise CallFailed("unknown_op", f"unknown control op {op!r}")
            value = handler(**args, fds=fds) if fds else handler(**args)
            reply = ("reply", ident, True, value)
        except CallFailed as exc:
            reply = ("reply", ident, False, (exc.kind, str(exc)))
        except Exception as exc:  # noqa: BLE001 - answered; the caller decides
            kind = getattr(exc, "kind", None) or type(exc).__name__
            if not isinstance(exc, (OSError, ValueError)) and getattr(exc, "kind", None) is None:
                log.exception("%s: control op %s failed", self.name, op)
            reply = ("reply", ident, False, (kind, str(exc)))
        try:
            self.channel.send(reply)
        except ChannelClosed:
            pass
