"""Outgoing TCP and unix connections as kernel sockets, over real loopback sockets: connected,
refused, timed out, a name resolved, a unix path."""

from __future__ import annotations

import _socket
import os
import socket
import time

import pytest

from vane.net.dial import tcp_connect_nonblocking, tcp_connect_raw, unix_connect_raw

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


def _exchanges(sock: socket.socket, peer: socket.socket) -> None:
    assert sock.gettimeout() == 0.0                         # non-blocking: the caller waits on it
    sock.send(b"ping")
    assert peer.recv(10) == b"ping"
    peer.sendall(b"pong")
    deadline = time.monotonic() + 2
    while True:
        try:
            assert sock.recv(10) == b"pong"
            return
        except BlockingIOError:
            assert time.monotonic() < deadline
            time.sleep(0.01)


def test_raw_connect_by_name_is_a_kernel_socket_with_nodelay():
    with listener() as lst:
        sock = tcp_connect_raw("localhost", lst.getsockname()[1], 2.0)
        try:
            assert type(sock) is _socket.socket                 # no gevent wrapper
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            peer, _ = lst.accept()
            with peer:
                _exchanges(sock, peer)
        finally:
            sock.close()


def test_raw_connect_to_a_unix_path_and_its_errors(tmp_path):
    path = str(tmp_path / "app.sock")
    with socket.socket(socket.AF_UNIX) as lst:
        lst.bind(path)
        lst.listen(4)
        sock = unix_connect_raw(path, 2.0)
        try:
            peer, _ = lst.accept()
            with peer:
                _exchanges(sock, peer)
        finally:
            sock.close()
    with pytest.raises(ConnectionRefusedError):        # the file stays, nobody listens
        unix_connect_raw(path, 2.0)
    with pytest.raises(FileNotFoundError):
        unix_connect_raw(str(tmp_path / "none.sock"), 2.0)
