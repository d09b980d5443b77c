"""Outgoing TCP connections for relays over real loopback sockets: connected, refused, timed out;
and the L4 proxy's memo of parsed targets stays bounded."""

from __future__ import annotations

import os
import socket
import time

import pytest

from vane.net.dial import tcp_connect_nonblocking

pytestmark = pytest.mark.timeout(20)


def listener(backlog: int = 8) -> socket.socket:
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(backlog)
    return lst


def test_nonblocking_connect_gives_a_connected_nodelay_socket():
    with listener() as lst:
        sock = tcp_connect_nonblocking("127.0.0.1", lst.getsockname()[1], 2.0, socket.AF_INET)
        try:
            peer, _ = lst.accept()
            with peer:
                assert sock.gettimeout() == 0.0  # never blocks the event loop
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
                assert sock.getpeername() == lst.getsockname()
                sock.send(b"ping")
                assert peer.recv(10) == b"ping"
        finally:
            sock.close()


def test_nonblocking_connect_to_a_closed_port_is_refused_at_once():
    with listener() as lst:
        port = lst.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        tcp_connect_nonblocking("127.0.0.1", port, 5.0, socket.AF_INET)
    assert time.monotonic() - t0 < 2.0


def test_nonblocking_connect_to_a_full_backlog_times_out():
    """A listener that accepts nothing and has no room left drops the SYN: the connect waits
    for the timeout, then fails with socket.timeout and leaves no descriptor behind."""
    with listener(backlog=0) as lst:
        addr = lst.getsockname()
        queued = []
        try:
            for _ in range(4):  # fill the accept queue; later SYNs go unanswered
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(addr)
                queued.append(s)
            time.sleep(0.1)
            fds = len(os.listdir("/proc/self/fd"))
            t0 = time.monotonic()
            with pytest.raises(socket.timeout):
                tcp_connect_nonblocking(addr[0], addr[1], 0.3, socket.AF_INET)
            assert 0.25 <= time.monotonic() - t0 < 2.0
            assert len(os.listdir("/proc/self/fd")) == fds
        finally:
            for s in queued:
                s.close()
