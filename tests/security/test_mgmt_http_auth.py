"""Hostile requests to HTTP management: no token, web pages (Origin, text/plain, DNS rebinding
through a foreign Host), wrong tokens on a kept-alive connection. The server is real (real
sockets, raw requests and httpx); the daemon behind it is the fake one, so a request that gets
through is visible (``shutdown_called``)."""

from __future__ import annotations

import socket

import httpx
import pytest

from tests.support.mgmt import start_http
from vane.mgmt.server_http import HttpMgmtServer

pytestmark = pytest.mark.timeout(30)

TOKEN = "4f1c0e7d9a8b6c5d4e3f2a1b0c9d8e7f"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def server(daemon):
    srv = start_http(daemon, token=TOKEN)
    yield srv
    srv.stop()


@pytest.fixture
def url(server):
    return f"http://127.0.0.1:{server.port}"


def raw(port: int, data: bytes, timeout: float = 3.0) -> bytes:
    """Send ``data`` on a fresh connection; everything the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def head(method: str, path: str, host: str, *lines: str, body: bytes = b"") -> bytes:
    fields = [f"{method} {path} HTTP/1.1", f"Host: {host}", *lines]
    if (body or method == "POST") and not any(x.lower().startswith("content-length:") for x in lines):
        fields.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(fields) + "\r\n\r\n").encode() + body


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://127.0.0.1:3333"])
def test_a_request_with_an_origin_header_is_refused(url, daemon, origin):
    r = httpx.post(f"{url}/v1/shutdown", json={}, headers={**AUTH, "Origin": origin})
    assert r.status_code == 403 and r.json()["error"]["kind"] == "BadRequest"
    assert "Origin" in r.json()["error"]["message"]
    assert r.headers["connection"] == "close"
    assert not daemon.shutdown_called
    assert httpx.get(f"{url}/metrics", headers={**AUTH, "Origin": origin}).status_code == 403


@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded",
                                   "multipart/form-data; boundary=x", "application/jsonp", "text/json"])
def test_a_post_that_is_not_json_is_refused(server, daemon, ctype):
    """What a form or fetch(no-cors) from a page can send without a preflight never runs a verb."""
    lines = [f"Authorization: Bearer {TOKEN}"] + ([f"Content-Type: {ctype}"] if ctype else [])
    out = raw(server.port, head("POST", "/v1/shutdown", "127.0.0.1", *lines, body=b"{}"))
    assert out.startswith(b"HTTP/1.1 415 ")
    assert b"application/json" in out
    assert not daemon.shutdown_called


def test_json_with_parameters_is_accepted(url, daemon):
    r = httpx.post(f"{url}/v1/shutdown", content=b"{}",
                   headers={**AUTH, "Content-Type": "Application/JSON; charset=utf-8"})
    assert r.status_code == 200 and daemon.shutdown_called


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "localhost.evil.example",
                                  "127.0.0.1.nip.io:{port}", "127.0.0.2", "[::2]:{port}", "0.0.0.0:{port}", ""])
def test_a_foreign_host_is_refused(server, daemon, host):
    """DNS rebinding: a page on a name that resolves to 127.0.0.1 sends that name as Host."""
    out = raw(server.port, head("POST", "/v1/shutdown", host.format(port=server.port),
                                f"Authorization: Bearer {TOKEN}", "Content-Type: application/json", body=b"{}"))
    assert out.startswith(b"HTTP/1.1 403 ")
    assert not daemon.shutdown_called


@pytest.mark.parametrize("host", ["localhost:{port}x", "[::1", "localhost, evil.example", "localhost@evil.example"])
def test_a_malformed_host_is_refused_by_the_parser(server, daemon, host):
    out = raw(server.port, head("POST", "/v1/shutdown", host.format(port=server.port),
                                f"Authorization: Bearer {TOKEN}", "Content-Type: application/json", body=b"{}"))
    assert out.startswith(b"HTTP/1.1 400 ")
    assert not daemon.shutdown_called


def test_an_absolute_target_cannot_name_a_foreign_host(server, daemon):
    out = raw(server.port, head("POST", "http://evil.example/v1/shutdown", "127.0.0.1",
                                f"Authorization: Bearer {TOKEN}", "Content-Type: application/json", body=b"{}"))
    assert out.startswith(b"HTTP/1.1 403 ") and not daemon.shutdown_called


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:{port}", "127.0.0.1", "127.0.0.1:{port}", "[::1]",
                                  "[::1]:8333"])
def test_loopback_names_are_accepted_with_or_without_a_port(server, host):
    out = raw(server.port, head("POST", "/v1/ping", host.format(port=server.port), "Connection: close",
                                f"Authorization: Bearer {TOKEN}", "Content-Type: application/json", body=b"{}"))
    assert out.startswith(b"HTTP/1.1 200 ") and b'"pong":true' in out


def test_public_names_are_accepted_only_when_public(daemon):
    def ping(srv: HttpMgmtServer, host: str) -> bytes:
        return raw(srv.port, head("POST", "/v1/ping", host, "Connection: close", f"Authorization: Bearer {TOKEN}",
                                  "Content-Type: application/json", body=b"{}"))

    public = HttpMgmtServer(daemon, port=0, token=TOKEN, public=True, hosts=["127.0.0.1"],
                            public_names=["mgmt.example.net"])
    private = HttpMgmtServer(daemon, port=0, token=TOKEN, hosts=["127.0.0.1"], public_names=["mgmt.example.net"])
    public.start()
    private.start()
    try:
        assert ping(public, "mgmt.example.net:3333").startswith(b"HTTP/1.1 200 ")
        assert ping(public, "localhost").startswith(b"HTTP/1.1 200 ")
        assert ping(public, "other.example.net").startswith(b"HTTP/1.1 403 ")
        assert ping(private, "mgmt.example.net").startswith(b"HTTP/1.1 403 ")
    finally:
        public.stop()
        private.stop()


@pytest.mark.parametrize("authorization", [None, "Bearer", "Bearer ", "Bearer wrong", f"Basic {TOKEN}",
                                           f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}0", f"{TOKEN}"])
def test_a_failed_authorisation_is_401_and_closes_the_connection(server, daemon, authorization):
    """Two requests in one write: the second (with the right token) is never read."""
    first = head("POST", "/v1/shutdown", "127.0.0.1", "Content-Type: application/json",
                 *([f"Authorization: {authorization}"] if authorization is not None else []), body=b"{}")
    second = head("POST", "/v1/shutdown", "127.0.0.1", "Content-Type: application/json",
                  f"Authorization: Bearer {TOKEN}", body=b"{}")
    out = raw(server.port, first + second)
    assert out.startswith(b"HTTP/1.1 401 ")
    assert b"www-authenticate: bearer" in out.lower()
    assert b"connection: close" in out.lower()
    assert out.count(b"HTTP/1.1 ") == 1
    assert not daemon.shutdown_called


def test_the_token_is_checked_before_the_body_is_read(server, daemon):
    """A wrong token with ``Expect: 100-continue`` and a body announced but never sent is
    answered 401 at once, without ``100 Continue``."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=3) as s:
        s.sendall(head("POST", "/v1/compile_dry_run", "127.0.0.1", "Authorization: Bearer nope",
                       "Content-Type: application/json", "Expect: 100-continue", "Content-Length: 900000"))
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    assert out.startswith(b"HTTP/1.1 401 ") and b"100 Continue" not in out


def test_an_authorised_client_keeps_its_connection_and_metrics_need_the_token(url):
    with httpx.Client(headers=AUTH) as client:
        for _ in range(3):
            assert client.post(f"{url}/v1/ping", json={}).json()["result"]["pong"]
        r = client.get(f"{url}/metrics", headers={"Accept": "application/openmetrics-text;version=1.0.0,*/*;q=0.1"})
        assert r.status_code == 200 and b"vane_requests" in r.content
    assert httpx.get(f"{url}/metrics").status_code == 401
