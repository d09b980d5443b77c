"""vaned forwarding at L4 over real loopback sockets: TCP integrity and half-close, UDP sessions,
balancing, dead targets, PROXY protocol headers. One daemon serves every rule of this module."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from types import SimpleNamespace
from typing import Iterator

import gevent
import pytest

from tests.support.backends import echo, recorder, tagged
from tests.support.config import proxy, rule
from tests.support.daemon import new_lab
from tests.support.net import connect, free_port, free_ports, recv_all, recv_line, wait_until
from tests.support.tls import TlsCerts
from vane.net.proxy_protocol import parse

pytestmark = pytest.mark.timeout(60)


SIZE = 10 * 1024 * 1024


@pytest.fixture(scope="module")
def env() -> Iterator[SimpleNamespace]:
    for lab in new_lab():
        backend = lab.tcp(echo)
        a, b = lab.tcp(tagged(b"A")), lab.tcp(tagged(b"B"))
        live = lab.tcp(tagged(b"LIVE"))
        pp1, pp2 = lab.tcp(recorder), lab.tcp(recorder)
        udp_backend, udp_pp_backend = lab.udp_echo(), lab.udp_echo()
        dual_backend = lab.tcp(recorder)
        dead = free_port()
        v6_backend = lab.tcp(tagged(b"V6"), host="::1")
        fwd, rr, skip, v1, v2, dual, idle, nowhere, to_v6, by_name = free_ports(10)
        dns, dns_dead, dns_pp, udp_nobody = free_ports(4, "udp")
        d = lab.vaned({
            "10-fwd.json": rule("fwd", proxy(backend.target), listen=f"127.0.0.1:{fwd}"),
            "20-rr.json": rule("rr", proxy([a.target, b.target], balance="round_robin"), listen=f"127.0.0.1:{rr}"),
            "30-skip.json": rule("skip", proxy([f"127.0.0.1:{dead}", live.target], connect_timeout=1),
                                 listen=f"127.0.0.1:{skip}"),
            "40-pp.json": [rule("pp1", proxy(pp1.target, proxy_protocol="v1"), listen=f"127.0.0.1:{v1}"),
                           rule("pp2", proxy(pp2.target, proxy_protocol="v2"), listen=f"127.0.0.1:{v2}")],
            "50-udp.json": [rule("dns", proxy(udp_backend.target, idle_timeout=2), listen=f"udp:127.0.0.1:{dns}"),
                            rule("dns-dead", proxy(f"127.0.0.1:{udp_nobody}", idle_timeout=2),
                                 listen=f"udp:127.0.0.1:{dns_dead}"),
                            rule("dns-pp", proxy(udp_pp_backend.target, idle_timeout=2, proxy_protocol="v2"),
                                 listen=f"udp:127.0.0.1:{dns_pp}")],
            "60-dual.json": rule("dual", proxy(dual_backend.target, proxy_protocol="v1"), listen=f":{dual}"),
            "70-idle.json": rule("idle", proxy(backend.target, idle_timeout=0.5), listen=f"127.0.0.1:{idle}"),
            "80-nowhere.json": rule("nowhere", proxy([f"127.0.0.1:{dead}", f"127.0.0.1:{free_port()}"]),
                                    listen=f"127.0.0.1:{nowhere}"),
            "90-targets.json": [rule("to-v6", proxy(v6_backend.target), listen=f"127.0.0.1:{to_v6}"),
                                rule("by-name", proxy(f"localhost:{live.port}"), listen=f"127.0.0.1:{by_name}")],
        })
        for port in (fwd, rr, skip, v1, v2, idle, nowhere, to_v6, by_name):
            d.wait_listening(port)
        d.wait_listening(dns, "udp")
        d.wait_listening(dns_dead, "udp")
        d.wait_listening(dns_pp, "udp")
        d.wait_log(rf"listening on tcp 0\.0\.0\.0:{dual}\b")
        d.wait_log(rf"listening on tcp \[::\]:{dual}\b")
        yield SimpleNamespace(lab=lab, d=d, fwd=fwd, rr=rr, skip=skip, v1=v1, v2=v2, dns=dns, a=a, b=b,
                              live=live, pp1=pp1, pp2=pp2, udp_backend=udp_backend, dead=dead,
                              dns_dead=dns_dead, dns_pp=dns_pp, dual=dual, dual_backend=dual_backend, idle=idle,
                              nowhere=nowhere, to_v6=to_v6, by_name=by_name)


def test_tcp_forward_10mib_both_ways_intact(env):
    payload = os.urandom(SIZE)
    with connect(env.fwd, timeout=10) as s:
        def send() -> None:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)

        sender = gevent.spawn(send)
        got = recv_all(s)
        sender.get(timeout=10)
    assert len(got) == SIZE
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest()


def test_tcp_half_close_still_receives_the_echo(env):
    with connect(env.fwd, timeout=5) as s:
        s.sendall(b"first part ")
        s.sendall(b"and the rest")
        s.shutdown(socket.SHUT_WR)  # the client is done talking, not listening
        assert recv_all(s) == b"first part and the rest"


def test_many_concurrent_tcp_connections(env):
    def one(i: int) -> bytes:
        with connect(env.fwd, timeout=5) as s:
            msg = f"conn {i}\n".encode() * 100
            s.sendall(msg)
            s.shutdown(socket.SHUT_WR)
            return recv_all(s) == msg

    jobs = [gevent.spawn(one, i) for i in range(50)]
    gevent.joinall(jobs, timeout=10, raise_error=True)
    assert all(j.value for j in jobs)


def test_udp_round_trips_and_clients_get_their_own_replies(env):
    c1 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with c1, c2:
        for c in (c1, c2):
            c.settimeout(3)
            c.bind(("127.0.0.1", 0))
        for i in range(5):  # interleaved, so both sessions are open at once
            c1.sendto(b"one-%d" % i, ("127.0.0.1", env.dns))
            c2.sendto(b"two-%d" % i, ("127.0.0.1", env.dns))
            assert c1.recvfrom(2048) == (b"echo:one-%d" % i, ("127.0.0.1", env.dns))
            assert c2.recvfrom(2048) == (b"echo:two-%d" % i, ("127.0.0.1", env.dns))
    # one upstream socket per client session, reused for all its datagrams
    sources = env.udp_backend.sources[-10:]
    assert len(set(sources)) == 2


def test_round_robin_spreads_across_two_backends(env):
    seen = []
    for _ in range(6):
        with connect(env.rr, timeout=5) as s:
            seen.append(recv_line(s).strip())
    assert sorted(seen) == [b"A"] * 3 + [b"B"] * 3
    assert all(x != y for x, y in zip(seen, seen[1:], strict=False))  # strictly alternating


def test_dead_target_is_skipped_and_the_live_one_serves(env):
    for i in range(4):
        with connect(env.skip, timeout=5) as s:
            assert recv_line(s) == b"LIVE\r\n"
            s.sendall(b"ping %d" % i)
            s.shutdown(socket.SHUT_WR)
            assert recv_all(s) == b"ping %d" % i
    assert env.live.accepted >= 4


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_proxy_protocol_header_carries_the_client_address(env, version):
    port, backend = (env.v1, env.pp1) if version == "v1" else (env.v2, env.pp2)
    before = len(backend.received)
    with connect(port, timeout=5) as s:
        client = s.getsockname()
        s.sendall(b"hello")
        s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == b"ok"
    data = backend.received[before]
    if version == "v1":
        assert data.startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1 %d %d\r\n" % (client[1], port))
    else:
        assert data.startswith(b"\r\n\r\n\x00\r\nQUIT\n")
    length, src, dst = parse(data)
    assert src == ("127.0.0.1", client[1])
    assert dst == ("127.0.0.1", port)
    assert data[length:] == b"hello"


def test_udp_proxy_protocol_v2_header_on_every_datagram(env):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.settimeout(3)
        c.bind(("127.0.0.1", 0))
        for i in range(3):
            c.sendto(b"query-%d" % i, ("127.0.0.1", env.dns_pp))
            reply, _ = c.recvfrom(2048)
            assert reply.startswith(b"echo:")
            parsed = parse(reply[5:])
            assert parsed is not None
            length, src, dst = parsed
            assert src == c.getsockname() and dst == ("127.0.0.1", env.dns_pp)
            assert reply[5 + length:] == b"query-%d" % i
            assert reply[5 + 13] == 0x12          # v2 family byte: IPv4 over UDP (DGRAM)


def test_udp_to_a_dead_backend_ends_the_session_quietly(env):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.settimeout(0.5)
        for i in range(3):
            c.sendto(b"anyone? %d" % i, ("127.0.0.1", env.dns_dead))
            with pytest.raises(socket.timeout):
                c.recvfrom(2048)
    gevent.sleep(0.1)
    assert "Traceback" not in env.d.stderr, env.d.stderr
    # the listener is unharmed: other clients still get answers
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.settimeout(3)
        c.sendto(b"still there", ("127.0.0.1", env.dns))
        assert c.recvfrom(2048)[0] == b"echo:still there"


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_dual_stack_listen_serves_both_families(env, family):
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    before = len(env.dual_backend.received)
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect((host, env.dual))
        port = s.getsockname()[1]
        s.sendall(b"hi")
        s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == b"ok"
    data = env.dual_backend.received[before]
    proto = "TCP4" if family == socket.AF_INET else "TCP6"
    assert data == f"PROXY {proto} {host} {host} {port} {env.dual}\r\n".encode() + b"hi"
    rows = env.d.listeners()
    assert rows[f"0.0.0.0:{env.dual}"]["state"] == rows[f"[::]:{env.dual}"]["state"] == "listening"


def test_idle_timeout_closes_a_silent_tunnel(env):
    with connect(env.idle, timeout=5) as s:
        s.sendall(b"a")
        assert s.recv(10) == b"a"
        start = time.monotonic()
        assert s.recv(10) == b""  # closed by vaned, cleanly
        assert 0.4 <= time.monotonic() - start < 2.0


def test_no_reachable_target_resets_the_client(env):
    mark = len(env.d.lines)
    with pytest.raises(ConnectionResetError):
        with connect(env.nowhere, timeout=5) as s:
            s.recv(10)
    env.d.wait_log(r"no target reachable: 127\.0\.0\.1:\d+: .*refused", since=mark)


@pytest.mark.parametrize("which, banner", [("to_v6", b"V6\r\n"), ("by_name", b"LIVE\r\n")])
def test_targets_by_ipv6_literal_and_by_host_name(env, which, banner):
    with connect(getattr(env, which), timeout=5) as s:
        assert recv_line(s) == banner


def connection_counts(d, port: int) -> tuple[float, float]:
    """(vane_connections_total, vane_connections_active) of the listener on ``port``."""
    label = f"tcp 127.0.0.1:{port}"
    values = {}
    for fam in d.cli_json("get", "metrics")["families"]:
        for s in fam["samples"]:
            if s["labels"].get("listener") == label:
                values[s["name"]] = s["value"]
    return values.get("vane_connections_total", 0.0), values.get("vane_connections_active", 0.0)


def test_short_connections_one_after_another_are_each_relayed_and_counted(env):
    """Many short tunnels in a row (served by reused connection greenlets): every one carries
    its own bytes, and the metrics count each of them, none left active."""
    total_before, _ = connection_counts(env.d, env.fwd)
    for i in range(60):
        with connect(env.fwd, timeout=5) as s:
            msg = b"tunnel %d " % i * (i + 1)
            s.sendall(msg)
            s.shutdown(socket.SHUT_WR)
            assert recv_all(s) == msg
    wait_until(lambda: connection_counts(env.d, env.fwd)[1] == 0)
    total, active = connection_counts(env.d, env.fwd)
    assert total - total_before == 60 and active == 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_every_way_a_tunnel_ends_gives_its_descriptors_back(env):
    """Connections are accepted as bare kernel sockets: relayed whole, relayed with a PROXY
    header, reset (no target reachable), ended by the idle timeout, or dropped by the client
    mid-stream (with RST), each one's descriptors are closed once it ends."""
    pid = env.d.pid
    with connect(env.fwd, timeout=5) as s:      # warm: pipes in the pool, workers started
        s.sendall(b"x")
        assert s.recv(1) == b"x"
    wait_until(lambda: connection_counts(env.d, env.fwd)[1] == 0)
    before = open_fds(pid)
    for _ in range(20):
        with connect(env.fwd, timeout=5) as s:
            s.sendall(b"whole")
            s.shutdown(socket.SHUT_WR)
            assert recv_all(s) == b"whole"
        with connect(env.v2, timeout=5) as s:
            s.sendall(b"behind a header")
        with pytest.raises(ConnectionResetError):
            with connect(env.nowhere, timeout=5) as s:
                s.recv(10)
        s = connect(env.fwd, timeout=5)
        s.sendall(b"y" * 65536)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()                               # RST while the echo is on its way back
    with connect(env.idle, timeout=5) as s:
        s.sendall(b"a")
        assert s.recv(1) == b"a"
        assert s.recv(1) == b""                 # the idle timeout ended it
    wait_until(lambda: all(connection_counts(env.d, port)[1] == 0
                           for port in (env.fwd, env.v2, env.nowhere, env.idle)), timeout=10)
    wait_until(lambda: open_fds(pid) <= before, timeout=10)


def test_tls_terminated_then_forwarded_in_clear_intact():
    """``upgrade tls`` then the L4 ``proxy``: the decrypted stream is relayed to a plain target
    (a TLS stream on one side, a bare socket on the other) intact both ways."""
    for lab in new_lab():
        certs = TlsCerts()
        issued = certs.ca.issue_cert("term.test")
        cert_path, key_path = lab.base / "term.pem", lab.base / "term.key"
        issued.cert_chain_pems[0].write_to_path(str(cert_path))
        issued.private_key_pem.write_to_path(str(key_path))
        backend = lab.tcp(echo)
        port = free_port()
        flow = {"upgrade": {"input": {"protocol": "tls", "certs": [{"cert": str(cert_path), "key": str(key_path)}]},
                            "output": {"next": proxy(backend.target)}}}
        d = lab.vaned({"term.json": rule("term", flow, listen=f"127.0.0.1:{port}")})
        d.wait_listening(port)
        payload = os.urandom(3 * 1024 * 1024 + 11)
        with certs.client_context().wrap_socket(connect(port, timeout=10), server_hostname="term.test") as tls:
            sender = gevent.spawn(tls.sendall, payload)
            got = bytearray()
            while len(got) < len(payload):
                chunk = tls.recv(65536)
                assert chunk, f"closed after {len(got)} bytes"
                got += chunk
            sender.get(timeout=10)
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        assert backend.accepted == 1
        assert "Traceback" not in d.stderr, d.stderr
