"""One port, several protocols (sslh style) and TLS passthrough routed by SNI, through a real
vaned: the bytes reach the backend untouched, so the client verifies the backend's own cert."""

from __future__ import annotations

import ssl
from types import SimpleNamespace
from typing import Iterator

import gevent
import pytest

from tests.support.backends import tagged, tls_greeter
from tests.support.config import proxy, rule
from tests.support.daemon import new_lab
from tests.support.net import connect, free_ports, recv_all, recv_line
from tests.support.tls import TlsCerts

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def env() -> Iterator[SimpleNamespace]:
    for lab in new_lab():
        certs = TlsCerts()
        ssh = lab.tcp(tagged(b"SSH-2.0-backend"))
        tls_one = lab.tcp(tls_greeter(certs.server_context("one.test"), b"one"))
        site_a = lab.tcp(tls_greeter(certs.server_context("a.test"), b"a"))
        site_b = lab.tcp(tls_greeter(certs.server_context("b.test"), b"b"))
        shared, sni, matched = free_ports(3)
        d = lab.vaned({
            "10-sslh.json": rule("one-port", {"detect": {"output": {
                "ssh": proxy(ssh.target),
                "tls": proxy(tls_one.target),
                "*": {"deny": {}},
            }}}, listen=f"127.0.0.1:{shared}"),
            "20-sni.json": [
                rule("sni-a", proxy(site_a.target), listen=f"127.0.0.1:{sni}", match={"tls.sni": "a.test"}),
                rule("sni-b", proxy(site_b.target), listen=f"127.0.0.1:{sni}", match={"tls.sni": "b.test"}),
            ],
            "30-match.json": [
                rule("m-ssh", proxy(ssh.target), listen=f"127.0.0.1:{matched}", match={"peek.protocol": "ssh"}),
                rule("m-a", proxy(site_a.target), listen=f"127.0.0.1:{matched}", match={"tls.sni": "a.test"}),
            ],
        })
        for port in (shared, sni, matched):
            d.wait_listening(port)
        yield SimpleNamespace(lab=lab, d=d, certs=certs, shared=shared, sni=sni, ssh=ssh, tls_one=tls_one,
                              site_a=site_a, site_b=site_b, matched=matched)


def tls_request(env: SimpleNamespace, port: int, hostname: str, line: bytes) -> tuple[bytes, dict]:
    """A verifying TLS client: the answer and the server certificate it accepted."""
    ctx = env.certs.client_context()
    with ctx.wrap_socket(connect(port, timeout=5), server_hostname=hostname) as tls:
        cert = tls.getpeercert()  # the handshake is done: verified against the test CA
        tls.sendall(line)
        return recv_all(tls), cert


def test_ssh_and_tls_on_one_port_reach_different_backends(env):
    with connect(env.shared, timeout=5) as s:
        s.sendall(b"SSH-2.0-test\r\n")
        assert recv_line(s) == b"SSH-2.0-backend\r\n"
        assert recv_line(s) == b"SSH-2.0-test\r\n"  # the banner arrived intact behind the peek
    answer, cert = tls_request(env, env.shared, "one.test", b"hello over tls\n")
    assert answer == b"one:hello over tls\n"
    assert ("DNS", "one.test") in cert["subjectAltName"]
    assert env.tls_one.accepted == 1


def test_rules_matching_peek_protocol_and_sni_share_a_listener(env):
    with connect(env.matched, timeout=5) as s:
        s.sendall(b"SSH-2.0-test\r\n")
        assert recv_line(s) == b"SSH-2.0-backend\r\n"
    answer, _ = tls_request(env, env.matched, "a.test", b"by rule\n")
    assert answer == b"a:by rule\n"
    with connect(env.matched, timeout=5) as s:  # neither rule matches: closed with RST
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(ConnectionResetError):
            s.recv(100)


def test_unknown_protocol_on_the_shared_port_is_reset(env):
    with connect(env.shared, timeout=5) as s:
        s.sendall(b"\x00\x01garbage that is no protocol\r\n")
        with pytest.raises(ConnectionResetError):
            s.recv(100)


@pytest.mark.parametrize("host", ["a.test", "b.test"])
def test_tls_passthrough_routed_by_sni(env, host):
    answer, cert = tls_request(env, env.sni, host, b"which site?\n")
    name = host.split(".")[0].encode()
    assert answer == name + b":which site?\n"
    assert ("DNS", host) in cert["subjectAltName"]  # the backend's cert: no termination in between


def test_sni_matching_is_case_insensitive_and_unknown_names_are_reset(env):
    answer, _ = tls_request(env, env.sni, "A.TEST", b"upper\n")
    assert answer == b"a:upper\n"
    with pytest.raises((ConnectionResetError, ssl.SSLError, OSError)):
        tls_request(env, env.sni, "c.test", b"nobody\n")


def fragmented_tls_request(env: SimpleNamespace, port: int, hostname: str, line: bytes) -> bytes:
    """A TLS client whose ClientHello reaches vaned in three TCP segments, 50 ms apart."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = env.certs.client_context().wrap_bio(incoming, outgoing, server_hostname=hostname)
    with connect(port, timeout=5) as s:
        with pytest.raises(ssl.SSLWantReadError):
            tls.do_handshake()
        hello = outgoing.read()
        for piece in (hello[:3], hello[3:60], hello[60:]):
            s.sendall(piece)
            gevent.sleep(0.05)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                s.sendall(outgoing.read())
                chunk = s.recv(65536)
                assert chunk, "connection closed during the handshake"
                incoming.write(chunk)
        tls.write(line)
        s.sendall(outgoing.read())
        answer = b""
        while True:
            try:
                answer += tls.read(65536)
            except ssl.SSLWantReadError:
                chunk = s.recv(65536)
                if not chunk:
                    return answer
                incoming.write(chunk)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return answer


def test_client_hello_split_across_segments_is_still_routed_by_sni(env):
    assert fragmented_tls_request(env, env.sni, "b.test", b"in pieces\n") == b"b:in pieces\n"
