"""End to end, the front of vaned: two TLS sites and cleartext HTTP on one port, SNI and ALPN,
request smuggling refused before anything reaches a backend, slowloris cut at the header timeout."""

import socket
import ssl
import time

import gevent
import httpx
import pytest
import trustme

from tests.support.config import http_proxy, rule, write_config
from tests.support.daemon import Vaned
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

    write_config(root, {"10-a.json": site("site-a", "a.test", e.a), "20-b.json": site("site-b", "b.test", e.b),
                        "30-plain.json": site("plain", "plain.test", e.c, tls=False)}, config={})
    e.vaned = Vaned(root, {"VANE_SEC_HEADER_TIMEOUT_SECS": "1"}).wait_accepting(e.port)
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
