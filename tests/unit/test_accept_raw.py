"""Accepting as bare kernel sockets (``accept_raw``) and wrapping one for blocking use
(``gevent_socket``), over real loopback sockets."""

from __future__ import annotations

import _socket
import os
import socket

import gevent
import pytest
from gevent import socket as gsocket

from vane.net.sockets import accept_raw, gevent_socket


@pytest.fixture
def listener():
    lst = gsocket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.bind(("127.0.0.1", 0))
    lst.listen(16)
    yield lst
    lst.close()


def test_accepts_a_nonblocking_kernel_socket(listener):
    client = socket.create_connection(listener.getsockname())
    sock, peer = accept_raw(listener)
    try:
        assert type(sock) is _socket.socket
        assert sock.gettimeout() == 0.0
        assert peer == client.getsockname()
        client.sendall(b"ping")
        gsocket.wait_read(sock.fileno(), 5)
        assert sock.recv(16) == b"ping"
        with pytest.raises(BlockingIOError):     # never blocks the hub
            sock.recv(16)
    finally:
        sock.close()
        client.close()


def test_waits_on_the_loop_for_a_connection(listener):
    ticks = []
    ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.01)) for _ in range(5)])
    later = gevent.spawn_later(0.1, socket.create_connection, listener.getsockname())
    sock, _ = accept_raw(listener)
    sock.close()
    assert len(ticks) == 5                      # other greenlets ran while it waited
    later.get().close()
    ticker.join()


def test_closing_the_listener_ends_a_waiting_accept_with_oserror(listener):
    waiting = gevent.spawn(accept_raw, listener)
    gevent.sleep(0.05)
    listener.close()
    with pytest.raises(OSError):
        waiting.get(timeout=5)


def test_gevent_socket_takes_the_descriptor_over(listener):
    client = socket.create_connection(listener.getsockname())
    raw, _ = accept_raw(listener)
    fd = raw.fileno()
    wrapped = gevent_socket(raw)
    try:
        assert isinstance(wrapped, gsocket.socket)
        assert raw.fileno() == -1 and wrapped.fileno() == fd   # one owner of the descriptor
        wrapped.settimeout(0.05)
        with pytest.raises(socket.timeout):                    # blocking, timed calls work
            wrapped.recv(16)
        client.sendall(b"hello")
        wrapped.settimeout(5)
        assert wrapped.recv(16) == b"hello"
        assert gevent_socket(wrapped) is wrapped
    finally:
        wrapped.close()
        client.close()
    gevent.sleep(0)                             # gevent closes the descriptor from the loop
    with pytest.raises(OSError):
        os.fstat(fd)
