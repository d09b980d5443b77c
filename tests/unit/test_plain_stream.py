"""``PlainStream``: an accepted kernel socket as a stream with watchers of its own, over real
loopback connections."""

from __future__ import annotations

import os
import socket
import time
from errno import EBADF

import gevent
import pytest
from gevent import socket as gsocket

from vane.net.plain import PlainStream
from vane.net.sockets import accept_raw


@pytest.fixture
def pair():
    lst = gsocket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.bind(("127.0.0.1", 0))
    lst.listen(4)
    client = gsocket.create_connection(lst.getsockname())
    raw, _ = accept_raw(lst)
    stream = PlainStream(raw)
    yield stream, client
    stream.close()
    client.close()
    lst.close()


def test_reads_wait_on_the_loop_and_time_out(pair):
    stream, client = pair
    stream.settimeout(0.05)
    t0 = time.monotonic()
    with pytest.raises(socket.timeout):
        stream.recv(16)
    assert time.monotonic() - t0 < 2
    gevent.spawn_later(0.05, client.sendall, b"hello world")
    stream.settimeout(5)
    assert stream.recv(5, socket.MSG_PEEK) == b"hello"      # peeked: still queued
    buf = bytearray(64)
    assert stream.recv_into(buf) == 11 and bytes(buf[:11]) == b"hello world"
    client.shutdown(socket.SHUT_WR)
    assert stream.recv(16) == b""


def test_sendall_waits_for_room_and_times_out_when_the_peer_stops_reading(pair):
    stream, client = pair
    data = os.urandom(16 << 20)            # far more than the socket buffers hold
    got = bytearray()

    def read_all():
        while len(got) < len(data):
            got.extend(client.recv(65536))

    reader = gevent.spawn(read_all)
    stream.settimeout(5)
    stream.sendall(data)                   # it waits for room as the reader drains
    reader.get(timeout=10)
    assert bytes(got) == data
    stream.settimeout(0.2)                 # nobody reads any more
    with pytest.raises(socket.timeout):
        stream.sendall(data)


def test_a_read_and_a_write_wait_at_once(pair):
    stream, client = pair
    stream.settimeout(5)
    reader = gevent.spawn(stream.recv, 16)
    second = gevent.spawn(stream.recv, 16)  # the same direction twice: a one-off watcher
    gevent.sleep(0.02)
    stream.sendall(b"ping")
    assert client.recv(16) == b"ping"
    client.sendall(b"a")
    first = reader.get(timeout=5) or second.get(timeout=5)
    assert first == b"a"
    client.sendall(b"b")
    assert {reader.get(timeout=5), second.get(timeout=5)} == {b"a", b"b"}


def test_close_wakes_a_waiting_reader_and_closes_the_descriptor(pair):
    stream, _client = pair
    fd = stream.fileno()
    waiting = gevent.spawn(stream.recv, 16)
    gevent.sleep(0.02)
    stream.close()
    with pytest.raises(OSError) as err:
        waiting.get(timeout=5)
    assert err.value.errno == EBADF
    gevent.sleep(0)                        # the descriptor closes once the waiter is woken
    with pytest.raises(OSError):
        os.fstat(fd)
    assert stream.closed
    stream.close()                         # twice is nothing


def test_abort_resets_the_connection(pair):
    stream, client = pair
    stream.abort()
    client.settimeout(5)
    with pytest.raises(ConnectionResetError):
        client.recv(16)


def test_detach_hands_the_socket_on_open(pair):
    stream, client = pair
    raw = stream.detach()
    assert stream.closed
    stream.close()                         # the stream no longer owns it: nothing happens
    client.sendall(b"still here")
    gsocket.wait_read(raw.fileno(), 5)
    assert raw.recv(16) == b"still here"
    raw.close()
