"""The TLS handshake rate of the security floor in a real vaned: the default lets a busy NAT
through (many browsers opening their connections in the same second), a breach is refused,
counted in ``vane stats`` and logged once per address per second."""

from __future__ import annotations

import socket
import ssl
import time

import pytest
import trustme

from tests.support.config import rule
from tests.support.daemon import Lab
from tests.support.net import connect, free_port

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def lab():
    with Lab() as lab_:
        yield lab_


def start(lab: Lab, env: dict[str, str]):
    ca = trustme.CA()
    cert = ca.issue_cert("site.test")
    (lab.conf / "certs").mkdir()
    cert.private_key_pem.write_to_path(str(lab.conf / "certs" / "site.key"))
    cert.cert_chain_pems[0].write_to_path(str(lab.conf / "certs" / "site.pem"))
    port = free_port()
    d = lab.vaned({"10.json": rule("site", {"respond": {"input": {"body": "ok"}}}, listen=f"127.0.0.1:{port}",
                                   tls={"cert": "certs/site.pem", "key": "certs/site.key"})}, env=env)
    d.wait_accepting(port)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return d, port, client


def handshake(port: int, client: ssl.SSLContext) -> bool:
    try:
        with connect(port, timeout=5) as raw, client.wrap_socket(raw, server_hostname="site.test") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n")
            return tls.recv(100).startswith(b"HTTP/1.1 200")
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError, socket.timeout):
        return False


def test_the_default_lets_a_busy_nat_through(lab):
    d, port, client = start(lab, {})
    started = time.monotonic()
    results = [handshake(port, client) for _ in range(60)]       # ten browsers, six connections each
    assert all(results), results.count(False)
    if time.monotonic() - started < 1.0:                           # all in one window: the limit was there
        assert d.mgmt("stats")["floor_hits"] == {}
    assert d.find(r"security floor") == -1


def test_a_breach_is_refused_counted_and_logged_once(lab):
    d, port, client = start(lab, {"VANE_SEC_TLS_HANDSHAKES_PER_IP": "3"})
    time.sleep(1.1)                              # the readiness probe's connection counted in an old window
    results = [handshake(port, client) for _ in range(3)]
    while len(results) < 30 and all(results[-3:]):  # a fourth within the first one's second is refused
        results.append(handshake(port, client))
    assert results[:3] == [True, True, True] and False in results
    refused = results.count(False)
    hits = d.mgmt("stats")["floor_hits"]
    assert hits == {"tls_handshakes_per_ip": refused}
    assert d.count(r"security floor: tls_handshakes_per_ip reached for 127\.0\.0\.1") <= 2
    assert "security floor" in d.cli("stats").stdout and f"tls_handshakes_per_ip {refused}" in d.cli("stats").stdout


def test_zero_turns_the_limit_off(lab):
    d, port, client = start(lab, {"VANE_SEC_TLS_HANDSHAKES_PER_IP": "0"})
    assert all(handshake(port, client) for _ in range(20))
    assert d.mgmt("stats")["floor_hits"] == {}
