"""The L4 relay over real loopback sockets: integrity, half-close, idle, reset, fallback path."""

from __future__ import annotations

import gc
import hashlib
import os
import socket
import struct
import time

import gevent
import mock
import pytest

from tests.support.net import recv_all, tcp_pair
from vane.net import pipes, tunnel
from vane.net.tunnel import Counters, relay

SIZE = 10 * 1024 * 1024


class WrappedStream:
    """A non-socket stream object, to force the buffered (non-splice) path."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.shutdowns = 0

    def recv_into(self, buf: memoryview) -> int:
        return self.sock.recv_into(buf)

    def sendall(self, data: bytes | memoryview) -> None:
        self.sock.sendall(data)

    def shutdown_write(self) -> None:
        self.shutdowns += 1
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def socket(self) -> socket.socket:
        return self.sock


class Setup:
    """client_ext <-> [client_int  relay  upstream_int] <-> upstream_ext"""

    def __init__(self) -> None:
        self.client_ext, self.client_int = tcp_pair()
        self.upstream_int, self.upstream_ext = tcp_pair()
        # The relay's sockets block only through the relay's own waits.
        self.client_int.settimeout(None)
        self.upstream_int.settimeout(None)
        self.counters = Counters()

    def start(self, idle: float | None = 5.0, wrap: bool = False, **kw) -> gevent.Greenlet:
        client = WrappedStream(self.client_int) if wrap else self.client_int
        self.client_obj = client
        return gevent.spawn(relay, client, self.upstream_int, idle, self.counters, **kw)

    def close(self) -> None:
        for s in (self.client_ext, self.client_int, self.upstream_int, self.upstream_ext):
            s.close()


@pytest.fixture
def setup():
    s = Setup()
    yield s
    s.close()


def send_and_hash(sock: socket.socket, data: bytes) -> str:
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
    return hashlib.sha256(data).hexdigest()


def recv_hash(sock: socket.socket) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    buf = bytearray(65536)
    while True:
        k = sock.recv_into(buf)
        if not k:
            return h.hexdigest(), n
        h.update(memoryview(buf)[:k])
        n += k


def bidirectional(setup: Setup, g: gevent.Greenlet) -> None:
    up_data = os.urandom(SIZE)
    down_data = os.urandom(SIZE)
    jobs = [
        gevent.spawn(send_and_hash, setup.client_ext, up_data),
        gevent.spawn(send_and_hash, setup.upstream_ext, down_data),
        gevent.spawn(recv_hash, setup.upstream_ext),
        gevent.spawn(recv_hash, setup.client_ext),
    ]
    gevent.joinall(jobs, timeout=10, raise_error=True)
    sent_up, sent_down, got_up, got_down = (j.value for j in jobs)
    assert got_up == (sent_up, SIZE)
    assert got_down == (sent_down, SIZE)
    g.join(timeout=2)
    assert g.dead and g.successful()
    assert setup.counters.up == SIZE and setup.counters.down == SIZE


def test_splice_path_detected():
    a, b = tcp_pair()
    try:
        assert tunnel.is_plain_socket(a)
        assert not tunnel.is_plain_socket(WrappedStream(a))
    finally:
        a.close()
        b.close()


def test_ten_mib_both_ways_splice(setup):
    g = setup.start()
    bidirectional(setup, g)
    assert setup.client_int.fileno() == -1 and setup.upstream_int.fileno() == -1


def test_ten_mib_both_ways_fallback(setup):
    g = setup.start(wrap=True)
    bidirectional(setup, g)
    assert setup.client_obj.shutdowns == 1  # upstream EOF was forwarded as a half-close
    assert setup.client_int.fileno() == -1


@pytest.mark.parametrize("wrap", [False, True])
def test_half_close_reply_still_arrives(setup, wrap):
    g = setup.start(wrap=wrap)
    setup.client_ext.sendall(b"question")
    setup.client_ext.shutdown(socket.SHUT_WR)
    assert recv_all(setup.upstream_ext) == b"question"  # EOF reached the upstream
    gevent.sleep(0.05)
    assert not g.dead  # the other direction is still open
    setup.upstream_ext.sendall(b"answer after the client's EOF")
    setup.upstream_ext.shutdown(socket.SHUT_WR)
    assert recv_all(setup.client_ext) == b"answer after the client's EOF"
    g.join(timeout=1)
    assert g.dead and g.successful()
    assert (setup.counters.up, setup.counters.down) == (8, 29)


@pytest.mark.parametrize("wrap", [False, True])
def test_idle_timeout_closes_both(setup, wrap):
    t0 = time.monotonic()
    g = setup.start(idle=0.2, wrap=wrap)
    g.join(timeout=1.5)
    elapsed = time.monotonic() - t0
    assert g.dead and g.successful()
    assert 0.18 <= elapsed < 1.2
    assert setup.client_ext.recv(10) == b""
    assert setup.upstream_ext.recv(10) == b""


def test_idle_timer_counts_both_directions(setup):
    """Traffic in one direction keeps the other direction's wait alive."""
    g = setup.start(idle=0.25)
    for _ in range(6):
        setup.client_ext.sendall(b"x")
        gevent.sleep(0.1)
    assert not g.dead
    assert setup.upstream_ext.recv(100) == b"xxxxxx"
    t0 = time.monotonic()
    g.join(timeout=1.5)
    assert g.dead and 0.1 <= time.monotonic() - t0 < 1.0


@pytest.mark.parametrize("wrap", [False, True])
def test_upstream_reset_resets_client(setup, wrap):
    g = setup.start(wrap=wrap)
    setup.client_ext.sendall(b"hello")
    assert setup.upstream_ext.recv(10) == b"hello"
    setup.upstream_ext.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    setup.upstream_ext.close()
    g.join(timeout=1.5)
    assert g.dead and g.successful()
    with pytest.raises(ConnectionResetError):
        setup.client_ext.recv(10)


def test_client_vanishing_mid_stream_ends_relay(setup):
    g = setup.start()
    big = os.urandom(4 * 1024 * 1024)
    sender = gevent.spawn(setup.upstream_ext.sendall, big)
    setup.client_ext.recv(1000)
    setup.client_ext.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    setup.client_ext.close()
    g.join(timeout=1.5)
    assert g.dead and g.successful()
    sender.join(timeout=1.5)
    assert sender.dead  # sendall failed with a reset rather than hanging


@pytest.mark.parametrize("wrap", [False, True])
def test_prefixes_sent_first_and_counted(setup, wrap):
    g = setup.start(wrap=wrap, upstream_prefix=b"PROXY UNKNOWN\r\n", client_prefix=b"hi ")
    setup.client_ext.sendall(b"data")
    setup.client_ext.shutdown(socket.SHUT_WR)
    assert recv_all(setup.upstream_ext) == b"PROXY UNKNOWN\r\ndata"
    setup.upstream_ext.sendall(b"there")
    setup.upstream_ext.shutdown(socket.SHUT_WR)
    assert recv_all(setup.client_ext) == b"hi there"
    g.join(timeout=1)
    assert (setup.counters.up, setup.counters.down) == (19, 8)


def test_counters_update_while_running(setup):
    g = setup.start()
    setup.client_ext.sendall(b"a" * 1000)
    got = 0
    while got < 1000:
        got += len(setup.upstream_ext.recv(4096))
    assert setup.counters.up == 1000 and setup.counters.down == 0
    assert not g.dead
    g.kill()


def test_killed_relay_closes_everything(setup):
    g = setup.start(idle=None)
    gevent.sleep(0.02)
    g.kill(timeout=1)
    assert g.dead
    assert setup.client_int.fileno() == -1 and setup.upstream_int.fileno() == -1
    with pytest.raises(ConnectionResetError):  # an aborted tunnel must not look finished
        setup.client_ext.recv(10)


@pytest.mark.parametrize("wrap", [False, True])
def test_odd_sizes_intact(setup, wrap):
    """A tiny copy buffer (many partial chunks) and an odd total still arrive intact."""
    g = setup.start(wrap=wrap, buffer_size=1000)
    data = os.urandom(1024 * 1024 + 7)
    s = gevent.spawn(send_and_hash, setup.client_ext, data)
    r = gevent.spawn(recv_hash, setup.upstream_ext)
    gevent.joinall([s, r], timeout=5, raise_error=True)
    assert r.value == (s.value, len(data))
    setup.upstream_ext.shutdown(socket.SHUT_WR)
    assert recv_all(setup.client_ext) == b""
    g.join(timeout=1)
    assert g.dead


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def echo_once(setup: Setup, payload: bytes) -> None:
    setup.client_ext.sendall(payload)
    got = b""
    while len(got) < len(payload):
        got += setup.upstream_ext.recv(65536)
    assert got == payload


def test_idle_tunnels_hold_no_pipes():
    """Pipes go back to the pool between bursts; finished relays leak no descriptors."""
    warm = Setup()
    g = warm.start()
    echo_once(warm, b"warm up")
    g.kill()
    warm.close()
    before = open_fds()
    free_before = len(pipes.pipes.free)
    setups = [Setup() for _ in range(5)]
    relays = [s.start() for s in setups]
    for s in setups:
        echo_once(s, os.urandom(300_000))
    assert open_fds() == before + 5 * 4  # only the sockets themselves
    assert len(pipes.pipes.free) == free_before
    for s, g in zip(setups, relays, strict=True):
        s.client_ext.shutdown(socket.SHUT_WR)
        s.upstream_ext.shutdown(socket.SHUT_WR)
        g.join(timeout=1)
        assert g.dead
        s.close()
    assert open_fds() == before


@pytest.mark.parametrize("wrap", [False, True])
def test_stalled_reader_ends_relay_after_idle(setup, wrap):
    """The client stops reading: once buffers are full nothing moves, so idle ends it."""
    g = setup.start(idle=0.2, wrap=wrap)
    sender = gevent.spawn(setup.upstream_ext.sendall, b"z" * (64 * 1024 * 1024))
    t0 = time.monotonic()
    g.join(timeout=3)
    assert g.dead and g.successful()
    assert time.monotonic() - t0 < 2.5
    sender.kill()


class FailingStream(WrappedStream):
    def recv_into(self, buf: memoryview) -> int:
        raise ValueError("stream bug")


def test_stream_bug_is_reraised_after_cleanup(setup):
    stream = FailingStream(setup.client_int)
    with pytest.raises(ValueError, match="stream bug"):
        relay(stream, setup.upstream_int, 1.0)
    assert setup.client_int.fileno() == -1 and setup.upstream_int.fileno() == -1


def test_many_concurrent_relays():
    setups = [Setup() for _ in range(40)]
    relays = [s.start() for s in setups]
    payload = os.urandom(200_000)

    def roundtrip(s: Setup) -> None:
        w = gevent.spawn(send_and_hash, s.client_ext, payload)
        assert recv_all(s.upstream_ext) == payload
        w.join()
        s.upstream_ext.sendall(payload[:1000])
        s.upstream_ext.shutdown(socket.SHUT_WR)
        assert recv_all(s.client_ext) == payload[:1000]

    gevent.joinall([gevent.spawn(roundtrip, s) for s in setups], timeout=5, raise_error=True)
    gevent.joinall(relays, timeout=2)
    assert all(g.dead and g.successful() for g in relays)
    assert all((s.counters.up, s.counters.down) == (200_000, 1000) for s in setups)
    assert len(pipes.pipes.free) <= pipes.PIPE_POOL_KEEP
    for s in setups:
        s.close()


def test_real_tls_stream_to_plain_upstream(setup, tmp_path):
    """The buffered path driving the project's TLS stream: integrity and half-close."""
    trustme = pytest.importorskip("trustme")
    tls = pytest.importorskip("vane.net.tls.server")
    import ssl

    ca = trustme.CA()
    cert = ca.issue_cert("tunnel.test")
    cert_path, key_path = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    up_data, down_data = os.urandom(2 * 1024 * 1024), os.urandom(3 * 1024 * 1024 + 5)
    holder: dict[str, ssl.SSLSocket] = {}

    def client_handshake() -> None:
        holder["tls"] = ctx.wrap_socket(setup.client_ext, server_hostname="tunnel.test")

    hs = gevent.spawn(client_handshake)
    stream = tls.ServerTLS([(str(cert_path), str(key_path))]).accept(setup.client_int)
    hs.join(timeout=2)
    client = holder["tls"]
    stream.settimeout(None)
    g = gevent.spawn(relay, stream, setup.upstream_int, 5.0, setup.counters)

    def upstream_side() -> str:
        got = b""
        while len(got) < len(up_data):
            got += setup.upstream_ext.recv(65536)
        setup.upstream_ext.sendall(down_data)
        setup.upstream_ext.shutdown(socket.SHUT_WR)
        assert setup.upstream_ext.recv(10) == b""  # the client's close reached the upstream
        return hashlib.sha256(got).hexdigest()

    u = gevent.spawn(upstream_side)
    client.sendall(up_data)
    received = recv_all(client)  # ends at the relay's close_notify after the upstream's EOF
    assert hashlib.sha256(received).digest() == hashlib.sha256(down_data).digest()
    client.close()
    u.join(timeout=3)
    assert u.value == hashlib.sha256(up_data).hexdigest()
    g.join(timeout=2)
    assert g.dead and g.successful()
    assert (setup.counters.up, setup.counters.down) == (len(up_data), len(down_data))


def test_without_pipes_the_plain_relay_copies_through_a_buffer(setup):
    """Out of descriptors for a pipe: both directions still move every byte, via a buffer."""
    with mock.patch.object(pipes.PipePool, "get", side_effect=OSError(24, "Too many open files")):
        g = setup.start(buffer_size=4096)
        bidirectional(setup, g)
    assert setup.client_int.fileno() == -1 and setup.upstream_int.fileno() == -1


def test_prefix_larger_than_the_socket_buffers_arrives_whole_and_first(setup):
    """A prefix the upstream cannot take in one write waits for it to drain, then the relay goes on."""
    prefix = os.urandom(8 * 1024 * 1024)
    g = setup.start(upstream_prefix=prefix)
    setup.client_ext.sendall(b"after the prefix")
    setup.client_ext.shutdown(socket.SHUT_WR)
    gevent.sleep(0.1)  # the relay is now stalled on a full upstream
    assert recv_all(setup.upstream_ext) == prefix + b"after the prefix"
    setup.upstream_ext.shutdown(socket.SHUT_WR)
    g.join(timeout=2)
    assert g.dead and g.successful()
    assert setup.counters.up == len(prefix) + 16


class FailingCounters(Counters):
    """Counting raises: stands for a bug inside the event-loop callbacks of the relay."""

    def __setattr__(self, name, value):
        if name == "up" and value:
            raise ValueError("counter bug")
        super().__setattr__(name, value)


def test_plain_relay_bug_is_reraised_after_cleanup(setup):
    setup.counters = FailingCounters()
    g = setup.start()
    setup.client_ext.sendall(b"boom")
    g.join(timeout=2)
    assert g.dead and isinstance(g.exception, ValueError)
    assert setup.client_int.fileno() == -1 and setup.upstream_int.fileno() == -1
    with pytest.raises(ConnectionResetError):  # ended by a fault: reset, never a clean close
        setup.client_ext.recv(10)


def test_plain_relay_leaves_nothing_for_the_cycle_collector(setup):
    """Every object of a finished relay is freed by reference counting alone."""
    gc.collect()
    gc.disable()
    try:
        g = setup.start()
        echo_once(setup, b"x" * 1000)
        setup.client_ext.shutdown(socket.SHUT_WR)
        setup.upstream_ext.shutdown(socket.SHUT_WR)
        g.join(timeout=2)
        assert g.dead and g.successful()
        del g
        left = [o for o in gc.get_objects() if type(o) in (tunnel._SpliceRelay, tunnel._Half)]
        assert left == []
    finally:
        gc.enable()


def test_plain_streams_are_relayed_as_their_sockets_by_splice(setup):
    """An accepted or upstream connection comes as a PlainStream: the relay takes its kernel
    socket out of it and splices, and closes the socket at the end."""
    from vane.net.dial import adopt
    from vane.net.plain import PlainStream

    client, upstream = PlainStream(adopt(setup.client_int)), PlainStream(adopt(setup.upstream_int))
    raw = (client.sock, upstream.sock)
    with mock.patch.object(tunnel, "splice", wraps=os.splice) as spliced:
        g = gevent.spawn(relay, client, upstream, 5.0, setup.counters)
        bidirectional(setup, g)
    assert spliced.called
    assert client.closed and upstream.closed
    assert all(s.fileno() == -1 for s in raw)
