"""The TLS side of ACME over real loopback sockets: TLS-ALPN-01 answers (RFC 8737) only for
names with a pending challenge, without disturbing other handshakes; a ``CertSlot`` swapped
while a connection is open; the issuer's error messages and Retry-After."""

from __future__ import annotations

import hashlib
import socket
import ssl

import pytest
import requests
import trustme
from cryptography import x509

from tests.integration.test_tls import TLSServer, client_ctx, connect, echo
from vane.acme.challenges import ACME_IDENTIFIER, ChallengeBoard
from vane.acme.issuer import _describe, _Network, _retry_after
from vane.acme.manager import AcmeManager
from vane.net.tls.certs import CertSlot, ContextCache
from vane.net.tls.server import ServerTLS


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def site(ca, tmp_path):
    issued = ca.issue_cert("a.test", "b.test")
    cert, key = tmp_path / "a.pem", tmp_path / "a.key"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


def alpn_only(name: str):
    ctx = ssl._create_unverified_context()
    ctx.set_alpn_protocols(["acme-tls/1"])
    raw = socket.create_connection(("127.0.0.1", port_of[0]), timeout=5)
    return ctx.wrap_socket(raw, server_hostname=name)


port_of = [0]


def peer(sock: ssl.SSLSocket) -> x509.Certificate:
    return x509.load_der_x509_certificate(sock.getpeercert(binary_form=True))


def test_tls_alpn01_answer_only_for_a_pending_name(ca, site):
    board = ChallengeBoard()
    server = TLSServer(ServerTLS([site], challenges=board), echo)
    port_of[0] = server.port
    try:
        board.put_tls_alpn01("a.test", "token.thumbprint")
        with alpn_only("a.test") as s:
            assert s.selected_alpn_protocol() == "acme-tls/1"
            cert = peer(s)
            ext = cert.extensions.get_extension_for_oid(ACME_IDENTIFIER)
            assert ext.critical and ext.value.value == b"\x04\x20" + hashlib.sha256(b"token.thumbprint").digest()
            assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
                .get_values_for_type(x509.DNSName) == ["a.test"]
        # b.test has no challenge: the normal certificate, no acme-tls/1
        with alpn_only("b.test") as s:
            assert s.selected_alpn_protocol() is None
            assert not any(e.oid == ACME_IDENTIFIER for e in peer(s).extensions)
        # an ordinary client of a.test meanwhile gets the site's certificate, verified
        with connect(server.port, client_ctx(ca, ["h2", "http/1.1"]), "a.test") as s:
            assert s.selected_alpn_protocol() == "h2"
            s.sendall(b"ping")
            assert s.recv(4) == b"ping"
        board.remove(name="a.test")
        with alpn_only("a.test") as s:
            assert s.selected_alpn_protocol() is None
    finally:
        server.stop()


def test_a_swapped_slot_serves_new_handshakes_and_leaves_open_ones_alone(ca, site, tmp_path):
    first = AcmeManager._fallback(("a.test",))
    slot = CertSlot(("a.test",), first)
    server = TLSServer(ServerTLS([slot, site]), echo)
    try:
        ctx = ssl._create_unverified_context()
        old = connect(server.port, ctx, "a.test")
        before = peer(old).serial_number
        slot.swap(ContextCache().load(*site))
        with connect(server.port, client_ctx(ca), "a.test") as new:  # verifies: the CA's certificate now
            assert peer(new).serial_number != before
        old.sendall(b"still here")
        assert old.recv(10) == b"still here"
        old.close()
    finally:
        server.stop()


def test_board_is_bounded_and_tells_its_listener():
    board = ChallengeBoard()
    seen = []
    board.on_change = lambda kind, key, authz: seen.append((kind, key, authz))
    board.put_http01("tok", "tok.thumb")
    assert board.http01("tok") == "tok.thumb" and board.pending() == [("http-01", "tok", "tok.thumb")]
    board.remove(token="tok")
    assert board.http01("tok") is None and board.pending() == []
    assert seen == [("http-01", "tok", "tok.thumb"), ("http-01", "tok", None)]


def test_retry_after_and_messages():
    net = _Network()
    resp = requests.Response()
    resp.status_code = 429
    resp.headers["Retry-After"] = "120"
    net.last_response = resp
    assert 110 < _retry_after(net) <= 120
    resp.headers.pop("Retry-After")
    assert _retry_after(net) is None
    msg = _describe(requests.exceptions.ConnectionError("refused"))
    assert msg.startswith("cannot reach the CA")
