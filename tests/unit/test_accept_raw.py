"""Accepting as bare kernel sockets (``accept_raw``), over real loopback sockets."""

from __future__ import annotations

import _socket
import socket

import gevent
import pytest
from gevent import socket as gsocket

from vane.net.sockets import accept_raw


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
