"""``req.client_ip`` behind trusted proxies (config.json ``trusted_proxies``), end to end: the
first untrusted hop from the right of X-Forwarded-For / Forwarded when the peer is trusted,
the peer itself otherwise (a client cannot claim an address)."""

from __future__ import annotations

import json

import pytest

from tests.support.config import rule
from tests.support.daemon import Lab
from tests.support.net import connect, free_port, read_for, wait_until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def lab():
    with Lab() as lab_:
        yield lab_


def ask(port: int, source: str, *headers: str) -> str:
    head = "".join(f"{h}\r\n" for h in headers)
    with connect(port, source) as sock:
        sock.sendall(f"GET / HTTP/1.1\r\nHost: x\r\n{head}Connection: close\r\n\r\n".encode())
        answer = read_for(sock, 3.0)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    return answer.split(b"\r\n\r\n", 1)[1].decode()


def test_client_ip_is_the_first_untrusted_hop_from_the_right(lab):
    (lab.conf / "config.json").write_text(json.dumps({"trusted_proxies": ["127.0.0.2", "10.0.0.0/8"]}))
    port = free_port()
    d = lab.vaned({"10.json": rule("r", {"respond": {"input": {"body": "{{req.client_ip}} {{conn.ip}}"}}},
                                   listen=f"127.0.0.1:{port}")})
    d.wait_accepting(port)
    lb = "127.0.0.2"
    assert ask(port, lb, "X-Forwarded-For: 6.6.6.6, 203.0.113.5, 10.1.1.1") == f"203.0.113.5 {lb}"
    assert ask(port, lb, "X-Forwarded-For: 6.6.6.6", "X-Forwarded-For: 10.2.2.2") == f"6.6.6.6 {lb}"
    assert ask(port, lb, 'Forwarded: for="[2001:db8::9]:443";proto=https, for=10.0.0.7') == f"2001:db8::9 {lb}"
    assert ask(port, lb, "X-Forwarded-For: 10.0.0.1, 10.0.0.2") == f"10.0.0.1 {lb}"     # all trusted: leftmost
    assert ask(port, lb, "X-Forwarded-For: 203.0.113.5, unknown") == f"{lb} {lb}"      # not an address: stop
    assert ask(port, lb) == f"{lb} {lb}"
    # not a trusted peer: its own address, whatever it claims
    assert ask(port, "127.0.0.3", "X-Forwarded-For: 1.2.3.4") == "127.0.0.3 127.0.0.3"
    # a reload changes the trusted set
    (lab.conf / "config.json").write_text(json.dumps({"trusted_proxies": ["127.0.0.3"]}))
    assert d.cli("reload").returncode == 0
    assert ask(port, "127.0.0.3", "X-Forwarded-For: 1.2.3.4") == "1.2.3.4 127.0.0.3"
    assert ask(port, lb, "X-Forwarded-For: 1.2.3.4") == f"{lb} {lb}"


def test_a_bad_network_is_a_compile_error(lab):
    (lab.conf / "config.json").write_text(json.dumps({"trusted_proxies": ["10.0.0.0/8", "10.0.0.0/99"]}))
    port = free_port()
    d = lab.vaned({"10.json": rule("r", {"respond": {}}, listen=f"127.0.0.1:{port}")}, ready=False)
    assert d.wait() == 1
    assert "config.json: /trusted_proxies/1: not a network" in d.stderr and "Traceback" not in d.stderr


def test_the_access_log_names_the_client_behind_trusted_proxies(lab):
    (lab.conf / "config.json").write_text(json.dumps({"trusted_proxies": ["127.0.0.2"]}))
    port = free_port()
    path = lab.base / "access.log"
    d = lab.vaned({"10.json": rule("r", {"respond": {"input": {"body": "x"}}}, listen=f"127.0.0.1:{port}")},
                  env={"VANE_ACCESS_LOG": str(path), "VANE_ACCESS_LOG_FLUSH_MS": "50"})
    d.wait_accepting(port)
    ask(port, "127.0.0.2", "X-Forwarded-For: 198.51.100.8")
    ask(port, "127.0.0.3", "X-Forwarded-For: 198.51.100.9")       # not trusted: its own address
    assert wait_until(lambda: path.exists() and len(path.read_text().splitlines()) == 2, 5.0)
    first, second = path.read_text().splitlines()
    assert first.startswith("198.51.100.8 - - [") and second.startswith("127.0.0.3 - - [")
