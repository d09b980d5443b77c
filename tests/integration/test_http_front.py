"""End to end, the front of vaned: two TLS sites and cleartext HTTP on one port, SNI and ALPN,
request smuggling refused before anything reaches a backend, slowloris cut at the header timeout;
and a cleartext-only port, where the first bytes tell HTTP/1.1 from h2c prior knowledge."""

import socket
import ssl
import time

import gevent
import httpx
import pytest
import trustme

from tests.support.config import http_proxy, rule, write_config
from tests.support.daemon import Vaned
from tests.support.h2raw import RawH2
from tests.support.http_backend import Backend
from tests.support.net import curl, free_port

pytestmark = pytest.mark.timeout(60)


class Env:
    pass


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("front")
    e = Env()
    e.ca = trustme.CA()
    e.ca_path = str(root / "ca.pem")
    e.ca.cert_pem.write_to_path(e.ca_path)
    (root / "certs").mkdir()
    for host in ("a.test", "b.test"):
        cert = e.ca.issue_cert(host)
        cert.cert_chain_pems[0].write_to_path(str(root / "certs" / f"{host}.pem"))
        cert.private_key_pem.write_to_path(str(root / "certs" / f"{host}.key"))
    e.a, e.b, e.c = Backend("A"), Backend("B"), Backend("C")
    e.port = free_port()
    listen = [f"127.0.0.1:{e.port}"]

    def site(name, host, backend, tls=True):
        r = rule(name, http_proxy(backend.url), listen=listen, match={"req.host": host})
        if tls:
            r["tls"] = {"cert": f"certs/{host}.pem", "key": f"certs/{host}.key"}
        return r

    e.plain_port = free_port()     # cleartext only: no node at L4 looks at the first bytes
    plain_only = rule("plain-only", http_proxy(e.c.url), listen=[f"127.0.0.1:{e.plain_port}"],
                      match={"req.host": "plain.test"})
    write_config(root, {"10-a.json": site("site-a", "a.test", e.a), "20-b.json": site("site-b", "b.test", e.b),
                        "30-plain.json": site("plain", "plain.test", e.c, tls=False),
                        "40-plain-only.json": plain_only}, config={})
    # the handshake timeout (which bounds a peek) well above the header timeout: a wait that
    # took the one before the other would show
    e.vaned = Vaned(root, {"VANE_SEC_HEADER_TIMEOUT_SECS": "1", "VANE_SEC_HANDSHAKE_TIMEOUT_SECS": "6"})
    e.vaned.wait_accepting(e.port).wait_accepting(e.plain_port)
    yield e
    e.vaned.stop()
    for b in (e.a, e.b, e.c):
        b.stop()


def tls_get(env, sni, alpn=("http/1.1",)):
    ctx = ssl.create_default_context(cafile=env.ca_path)
    ctx.set_alpn_protocols(list(alpn))
    with socket.create_connection(("127.0.0.1", env.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as s:
            cert_names = [v for k, v in s.getpeercert()["subjectAltName"]]
            chosen = s.selected_alpn_protocol()
            if chosen == "h2":
                return cert_names, chosen, None
            s.sendall(f"GET /hello HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            return cert_names, chosen, data


def test_two_tls_sites_by_sni_on_one_port(env):
    names, alpn, data = tls_get(env, "a.test")
    assert names == ["a.test"] and alpn == "http/1.1" and data.startswith(b"HTTP/1.1 200")
    names, _, data = tls_get(env, "b.test")
    assert names == ["b.test"] and data.startswith(b"HTTP/1.1 200")
    assert env.a.requests >= 1 and env.b.requests >= 1


def test_alpn_h2_negotiated_and_served(env):
    names, alpn, _ = tls_get(env, "b.test", ("h2", "http/1.1"))
    assert alpn == "h2" and names == ["b.test"]
    with httpx.Client(http2=True, verify=ssl.create_default_context(cafile=env.ca_path)) as client:
        resp = client.get(f"https://127.0.0.1:{env.port}/hello",
                          extensions={"sni_hostname": "b.test"}, headers={"host": "b.test"})
    assert resp.http_version == "HTTP/2" and resp.status_code == 200


def test_cleartext_and_h2c_on_the_same_port(env):
    out = curl("-H", "Host: plain.test", f"http://127.0.0.1:{env.port}/x", "-o", "/dev/null", "-w", "%{http_code}")
    assert out.stdout == b"200"
    out = curl("--http2-prior-knowledge", "-H", "Host: plain.test", f"http://127.0.0.1:{env.port}/x",
               "-o", "/dev/null", "-w", "%{http_code} %{http_version}")
    assert out.stdout == b"200 2"
    out = curl("--http2-prior-knowledge", f"http://127.0.0.1:{env.port}/x", "-o", "/dev/null", "-w", "%{http_code}")
    assert out.stdout == b"421"  # no rule for this host, over HTTP/2
    out = curl(f"http://127.0.0.1:{env.port}/x", "-o", "/dev/null", "-w", "%{http_code}")
    assert out.stdout == b"404"


def test_upgrade_h2c_declined_and_connection_kept(env):
    """curl --http2 on http:// offers Upgrade: h2c (deprecated by RFC 9113); vaned answers on
    HTTP/1.1 and keeps the connection for the next request."""
    url = f"http://127.0.0.1:{env.port}/x"
    out = curl("-v", "--http2", "-H", "Host: plain.test", url, url, "-o", "/dev/null", "-o", "/dev/null",
               "-w", "%{http_code} %{http_version};")
    assert out.stdout == b"200 1.1;200 1.1;"
    assert b"Upgrade: h2c" in out.stderr and out.stderr.count(b"Re-using existing connection") == 1


SMUGGLING = {
    "cl+te": b"POST / HTTP/1.1\r\nHost: plain.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"0\r\n\r\n",
    "double cl": b"POST / HTTP/1.1\r\nHost: plain.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "bad chunk size": b"POST / HTTP/1.1\r\nHost: plain.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: plain.test\r\nX-A: one\r\n two\r\n\r\n",
    "te gzip": b"POST / HTTP/1.1\r\nHost: plain.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "space in name": b"GET / HTTP/1.1\r\nHost: plain.test\r\nBad Name: x\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(SMUGGLING))
def test_smuggling_answered_400_and_never_forwarded(env, name):
    before = env.c.requests
    with socket.create_connection(("127.0.0.1", env.port), timeout=5) as s:
        s.sendall(SMUGGLING[name])
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400"), (name, data[:80])
    gevent.sleep(0.1)
    assert env.c.requests == before


def test_error_answer_survives_unread_client_input(env):
    """A 400 sent while the client's upload is still unread reaches it: vaned half-closes and drains
    (lingering close) instead of closing with unread input, which would reset the answer."""
    with socket.create_connection(("127.0.0.1", env.port), timeout=5) as s:
        s.sendall(SMUGGLING["cl+te"] + b"x" * 200_000)
        gevent.sleep(0.3)   # the 400 is out; closing now with that input unread would reset
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400")


def test_slowloris_cut_at_header_timeout_while_others_are_served(env):
    slow = socket.create_connection(("127.0.0.1", env.port), timeout=5)
    t0 = time.monotonic()

    def trickle():
        try:
            for byte in b"GET / HTTP/1.1\r\nHost: plain.test\r\nX-Slow: " + b"a" * 100:
                slow.sendall(bytes([byte]))
                gevent.sleep(0.1)
        except OSError:
            pass

    g = gevent.spawn(trickle)
    gevent.sleep(0.3)
    fast = curl("-H", "Host: plain.test", f"http://127.0.0.1:{env.port}/x", "-o", "/dev/null", "-w", "%{http_code}")
    assert fast.stdout == b"200" and time.monotonic() - t0 < 1.5
    data = b""
    while chunk := slow.recv(65536):
        data += chunk
    g.kill()
    slow.close()
    assert data.startswith(b"HTTP/1.1 408")
    assert 0.8 < time.monotonic() - t0 < 3.5


# -- the cleartext-only port: HTTP/1.1 or h2c, told by the first bytes ----------------------------

def read_all(s: socket.socket) -> bytes:
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def test_cleartext_first_byte_then_silence_is_408_at_the_header_timeout(env):
    with socket.create_connection(("127.0.0.1", env.plain_port), timeout=10) as s:
        t0 = time.monotonic()
        s.sendall(b"G")
        data = read_all(s)
        waited = time.monotonic() - t0
    assert data.startswith(b"HTTP/1.1 408")
    assert waited < 4.0     # the header timeout (1 s), not the handshake timeout (6 s) before it


def test_silent_cleartext_client_closed_at_the_header_timeout(env):
    with socket.create_connection(("127.0.0.1", env.plain_port), timeout=10) as s:
        t0 = time.monotonic()
        data = read_all(s)
        waited = time.monotonic() - t0
    assert data == b"" and waited < 4.0


def test_h2c_preface_in_pieces_is_served_over_http2(env):
    class Trickled(RawH2):
        """Sends the client preface and its SETTINGS a few bytes at a time."""

        pieces = (1, 3, 10, 23)     # cuts inside the 24-byte preface, and after it

        def flush(self) -> None:
            data = self.conn.data_to_send()
            cuts = self.pieces
            self.pieces = ()
            start = 0
            for cut in cuts:
                self.sock.sendall(data[start:cut])
                start = cut
                time.sleep(0.05)
            if data[start:]:
                self.sock.sendall(data[start:])

    before = env.c.requests
    client = Trickled(env.plain_port)
    sid = client.get(b"/split", authority=b"plain.test")
    assert client.pump(lambda: client.responses.get(sid, {}).get("ended"))
    assert client.responses[sid]["status"] == 200 and client.responses[sid]["body"] == b"C /split"
    assert env.c.requests == before + 1
    client.sock.close()


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _first_answer_after(s: socket.socket, pieces: list[bytes], gap: float) -> tuple[bytes, float]:
    """Send ``pieces`` ``gap`` seconds apart until vaned answers or closes; what it sent
    first and when, counted from the first piece."""
    s.setblocking(False)
    t0 = time.monotonic()
    for piece in pieces:
        try:
            s.sendall(piece)
        except OSError:         # already answered and closed
            break
        deadline = time.monotonic() + gap
        while time.monotonic() < deadline:
            try:
                return s.recv(65536), time.monotonic() - t0
            except BlockingIOError:
                time.sleep(0.02)
    s.settimeout(5)
    return s.recv(65536), time.monotonic() - t0


def test_preface_trickled_past_the_header_timeout_gets_one_header_timeout(env):
    """Bytes that stay the start of the preface, one every 0.4 s: the header timeout (1 s)
    runs once from the first byte, not again when the HTTP/1.1 parser takes them over."""
    with socket.create_connection(("127.0.0.1", env.plain_port), timeout=10) as s:
        data, waited = _first_answer_after(s, [PREFACE[:16]] + [bytes([b]) for b in PREFACE[16:]], 0.4)
    assert data.startswith(b"HTTP/1.1 408") or data == b"", data[:80]
    assert waited < 1.8      # one header timeout after the first byte (two would be 2 s and more)


def test_h2c_without_a_request_ends_one_header_timeout_after_its_first_byte(env):
    """The whole preface, in pieces over 0.9 s, and then no request: HTTP/2's wait for the
    first request is what is left of the header timeout, not a fresh one."""
    pieces = [PREFACE[:4], PREFACE[4:10], PREFACE[10:18], PREFACE[18:]]
    with socket.create_connection(("127.0.0.1", env.plain_port), timeout=10) as s:
        t0 = time.monotonic()
        for piece in pieces:
            s.sendall(piece)
            time.sleep(0.3)
        s.settimeout(5)
        data = read_all(s)      # SETTINGS, then GOAWAY and the close
        waited = time.monotonic() - t0
    assert data[3:4] == b"\x04"   # an HTTP/2 frame: SETTINGS
    assert waited < 1.6      # about 1 s after the first byte (a fresh timeout: 1.9 s and more)


def test_curl_h2c_prior_knowledge_on_the_cleartext_port(env):
    out = curl("--http2-prior-knowledge", "-H", "Host: plain.test", f"http://127.0.0.1:{env.plain_port}/x",
               "-o", "/dev/null", "-w", "%{http_code} %{http_version}")
    assert out.stdout == b"200 2"


def test_request_sharing_the_prefaces_first_byte_is_http1(env):
    """A POST opens like the preface ("P"); sent a byte at first, it is still an HTTP/1.1 request."""
    with socket.create_connection(("127.0.0.1", env.plain_port), timeout=5) as s:
        s.sendall(b"P")
        time.sleep(0.05)
        s.sendall(b"OST /echo HTTP/1.1\r\nHost: plain.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
        data = read_all(s)
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"hello")


@pytest.mark.parametrize("opening", [b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",      # the preface, wrong
                                     b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r",          # one byte short, then EOF
                                     b"PRI / HTTP/1.1\r\nHost: plain.test\r\n\r\n"])
def test_not_quite_the_preface_never_reaches_the_backend(env, opening):
    before = env.c.requests
    with socket.create_connection(("127.0.0.1", env.plain_port), timeout=5) as s:
        s.sendall(opening)
        if not opening.endswith(b"\r\n\r\n"):
            s.shutdown(socket.SHUT_WR)
        data = read_all(s)
    assert data == b"" or data.startswith(b"HTTP/1.1 400"), data[:80]
    assert env.c.requests == before
