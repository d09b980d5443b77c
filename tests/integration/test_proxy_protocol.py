"""PROXY protocol accepted on a listener (``accept_proxy_protocol``), end to end on raw sockets
from loopback aliases: 127.0.0.2 plays the trusted load balancer, 127.0.0.3 anyone else.
Clients' addresses from v1 and v2 headers become ``conn.ip``/``conn.port`` (and what the
security floor and the access log count); an untrusted source, or a trusted one without a
header, is refused."""

from __future__ import annotations

import json
import ssl

import gevent
import pytest
import trustme

from tests.support.config import rule
from tests.support.daemon import Lab, Vaned
from tests.support.net import connect, free_port, read_for, wait_until
from vane.net.proxy_protocol import V2_SIGNATURE, header_v1, header_v2

pytestmark = pytest.mark.timeout(60)

LB, OTHER = "127.0.0.2", "127.0.0.3"
GET = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
ECHO = {"respond": {"input": {"body": "{{conn.ip}} {{conn.port}}"}}}


@pytest.fixture
def lab():
    with Lab() as lab_:
        yield lab_


def start(lab: Lab, env: dict | None = None, trusted: list[str] | None = None) -> tuple[Vaned, int]:
    port = free_port()
    d = lab.vaned({"10-pp.json": rule("pp", ECHO, listen=f"127.0.0.1:{port}",
                                      accept_proxy_protocol={"trusted": trusted or [f"{LB}/32"]})},
                  env={"VANE_SEC_HANDSHAKE_TIMEOUT_SECS": "2", **(env or {})})
    d.wait_accepting(port)
    return d, port


def ask(port: int, data: bytes, source: str, seconds: float = 3.0) -> bytes:
    try:
        with connect(port, source) as sock:
            sock.sendall(data)
            return read_for(sock, seconds)
    except (ConnectionResetError, BrokenPipeError):
        return b""


def body(answer: bytes) -> str:
    assert answer.startswith(b"HTTP/1.1 200"), answer
    return answer.split(b"\r\n\r\n", 1)[1].decode()


def test_v1_and_v2_from_a_trusted_source_give_the_client_address(lab):
    d, port = start(lab)
    v1 = header_v1(("203.0.113.9", 5555), ("127.0.0.1", port))
    assert body(ask(port, v1 + GET, LB)) == "203.0.113.9 5555"
    v2 = header_v2(("2001:db8::7", 4444), ("::1", port))
    assert body(ask(port, v2 + GET, LB)) == "2001:db8::7 4444"
    v2_in_pieces = header_v2(("198.51.100.4", 1234), ("127.0.0.1", port))
    with connect(port, LB) as sock:             # a header split over several segments
        sock.sendall(v2_in_pieces[:5])
        gevent_sleep(0.1)
        sock.sendall(v2_in_pieces[5:] + GET)
        assert body(read_for(sock, 3.0)) == "198.51.100.4 1234"


def gevent_sleep(seconds: float) -> None:
    gevent.sleep(seconds)


def test_a_v2_local_header_keeps_the_senders_address(lab):
    _d, port = start(lab)
    local = V2_SIGNATURE + bytes([0x20, 0x00]) + (0).to_bytes(2, "big")
    with connect(port, LB) as sock:
        sock.sendall(local + GET)
        text = body(read_for(sock, 3.0))
    assert text.split()[0] == LB


def test_a_trusted_source_without_a_header_is_refused(lab):
    d, port = start(lab)
    assert ask(port, GET, LB) == b""
    assert ask(port, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n" + GET, LB) == b""         # no CR: malformed
    assert ask(port, b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n" + GET, LB) == b""   # bad port
    assert ask(port, b"", LB, seconds=3.5) == b""                                   # silent: timed out
    huge = V2_SIGNATURE + bytes([0x21, 0x11]) + (60000).to_bytes(2, "big") + bytes(5000)
    assert ask(port, huge, LB, seconds=3.5) == b""                                  # past 4 KiB: refused
    d.wait_log(r"connection from 127\.0\.0\.2 refused")
    assert "vane_floor" in d.mgmt("get_metrics")["text"] and 'proxy_protocol' in d.mgmt("get_metrics")["text"]


def test_an_untrusted_source_is_refused_with_or_without_a_header(lab):
    d, port = start(lab)
    forged = header_v1(("10.9.9.9", 1), ("127.0.0.1", port))
    assert ask(port, forged + GET, OTHER) == b""
    assert ask(port, GET, OTHER) == b""
    d.wait_log(r"connection from 127\.0\.0\.3 refused: not a trusted source")
    assert d.find(r"Traceback") == -1


def test_the_security_floor_counts_the_real_client(lab):
    _d, port = start(lab, env={"VANE_SEC_MAX_CONNECTIONS_PER_IP": "2"})
    held = []
    for n in range(2):                          # client A holds its two connections open
        sock = lab.hold(connect(port, LB, timeout=5))
        sock.sendall(header_v1(("203.0.113.1", 1000 + n), ("127.0.0.1", port)))
        held.append(sock)
    assert wait_until(lambda: len(_d.mgmt("get_connections")["connections"]) == 2, 5.0)
    third = ask(port, header_v1(("203.0.113.1", 1002), ("127.0.0.1", port)) + GET, LB)
    assert third == b""                         # A is at its limit, though the LB's address is not
    assert body(ask(port, header_v1(("203.0.113.2", 2000), ("127.0.0.1", port)) + GET, LB)) == "203.0.113.2 2000"
    remotes = {c["remote"] for c in _d.mgmt("get_connections")["connections"]}
    assert remotes == {"203.0.113.1:1000", "203.0.113.1:1001"}


def test_with_two_workers(lab):
    _d, port = start(lab, env={"VANE_WORKERS": "2"})
    for n in range(6):
        got = body(ask(port, header_v1(("192.0.2.50", 3000 + n), ("127.0.0.1", port)) + GET, LB))
        assert got == f"192.0.2.50 {3000 + n}"
    assert ask(port, GET, OTHER) == b""


def test_access_log_and_forwarded_headers_carry_the_client(lab):
    from tests.support.http_backend import Backend
    backend = Backend("b")
    lab.on_close(backend.stop)
    port = free_port()
    path = lab.base / "access.json"
    d = lab.vaned({"10-pp.json": rule("pp", {"proxy": {"input": {"upstream": backend.url}}},
                                      listen=f"127.0.0.1:{port}", accept_proxy_protocol={"trusted": ["127.0.0.0/30"]})},
                  env={"VANE_ACCESS_LOG": str(path), "VANE_ACCESS_LOG_FORMAT": "json",
                       "VANE_ACCESS_LOG_FLUSH_MS": "50"})
    d.wait_accepting(port)
    answer = ask(port, header_v1(("198.51.100.77", 4321), ("127.0.0.1", port)) + GET.replace(b"/", b"/echo", 1), LB)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert wait_until(lambda: path.exists() and path.read_text(), 5.0)
    entry = json.loads(path.read_text().splitlines()[0])
    assert entry["remote"] == "198.51.100.77" and entry["remote_port"] == 4321
    forwarded = dict(backend.seen[-1]["headers"])
    assert forwarded["x-forwarded-for"] == "198.51.100.77", forwarded


def test_trusted_networks_of_either_family(lab):
    _d, port = start(lab, trusted=["::1/128", "127.0.0.2"])
    assert body(ask(port, header_v1(("192.0.2.1", 1), ("127.0.0.1", port)) + GET, LB)) == "192.0.2.1 1"
    assert ask(port, header_v1(("192.0.2.1", 1), ("127.0.0.1", port)) + GET, OTHER) == b""


def test_tls_after_the_header_and_the_handshake_floor_counts_the_client(lab):
    ca = trustme.CA()
    cert = ca.issue_cert("site.test")
    (lab.conf / "certs").mkdir()
    cert.private_key_pem.write_to_path(str(lab.conf / "certs" / "site.key"))
    cert.cert_chain_pems[0].write_to_path(str(lab.conf / "certs" / "site.pem"))
    port = free_port()
    d = lab.vaned({"10.json": rule("site", ECHO, listen=f"127.0.0.1:{port}", tls={"cert": "certs/site.pem",
                                                                               "key": "certs/site.key"},
                                   accept_proxy_protocol={"trusted": [LB]})},
                  env={"VANE_SEC_TLS_HANDSHAKES_PER_IP": "2"})
    d.wait_accepting(port)
    client = ssl.create_default_context()
    ca.configure_trust(client)

    def over_tls(src: str) -> bytes:
        raw = connect(port, LB, timeout=5)
        try:
            raw.sendall(header_v2((src, 4000), ("127.0.0.1", port)))
            with client.wrap_socket(raw, server_hostname="site.test") as tls:
                tls.sendall(GET)
                return read_for(tls, 3.0)
        except (OSError, ssl.SSLError):
            return b""
        finally:
            raw.close()

    assert body(over_tls("203.0.113.10")) == "203.0.113.10 4000"
    assert body(over_tls("203.0.113.10")) == "203.0.113.10 4000"
    third = over_tls("203.0.113.10")                   # that client's third handshake within a second
    fourth = over_tls("203.0.113.11")                  # another client behind the same balancer
    assert body(fourth) == "203.0.113.11 4000"
    if third:                                          # a slow machine may have crossed into the next second
        assert body(third) == "203.0.113.10 4000"
    else:
        assert d.mgmt("stats")["floor_hits"]["tls_handshakes_per_ip"] == 1   # (the readiness probe: proxy_protocol)
