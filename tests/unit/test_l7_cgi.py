"""CGI response header blocks (RFC 3875 §6) and the request environment."""

import os
from types import SimpleNamespace

import pytest

from vane.net.cgi_process import CgiError, _head_end, parse_head
from vane.net.http.message import Body, Headers, Request
from vane.plugins.builtin.cgi import Cgi, resolve_script


def test_head_end_finds_the_first_blank_line():
    assert _head_end(b"A: 1\n\nbody\r\n\r\n") == (4, 2)
    assert _head_end(b"A: 1\r\n\r\nbody") == (4, 4)
    assert _head_end(b"A: 1\r\n") == (-1, 0)


def test_parse_head_status_location_and_hop_by_hop():
    status, headers = parse_head(b"Status: 404 Not Found\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                                 b"Content-Length: 3\r\nX-A: b")
    assert status == 404 and headers.items_ == [(b"content-type", b"text/plain"), (b"x-a", b"b")]
    assert parse_head(b"Location: https://example.com/")[0] == 302
    assert parse_head(b"Status: 301\nLocation: /x")[0] == 301
    assert parse_head(b"Content-Type: text/html")[0] == 200


@pytest.mark.parametrize("head", [b"no colon here", b"Status: abc", b"Status: 42", b"Bad Name: x"])
def test_parse_head_refuses_garbage(head):
    with pytest.raises(CgiError):
        parse_head(head)


def test_script_must_live_under_bin(tmp_path):
    (tmp_path / "bin").mkdir()
    script = tmp_path / "bin" / "ok.cgi"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    (tmp_path / "other.cgi").write_text("#!/bin/sh\n")
    assert resolve_script("bin/ok.cgi", str(tmp_path)) == os.path.realpath(script)
    with pytest.raises(ValueError, match="not under"):
        resolve_script("other.cgi", str(tmp_path))
    with pytest.raises(ValueError, match="not under"):
        resolve_script("bin/../other.cgi", str(tmp_path))
    with pytest.raises(ValueError, match="templated"):
        resolve_script("bin/{{req.path}}", str(tmp_path))
    (tmp_path / "bin" / "noexec").write_text("x")
    with pytest.raises(ValueError, match="executable"):
        resolve_script("bin/noexec", str(tmp_path))


def test_environment_from_request(tmp_path):
    (tmp_path / "bin").mkdir()
    script = tmp_path / "bin" / "app"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    node = SimpleNamespace(input=SimpleNamespace(raw={"script": "bin/app"}))
    env = SimpleNamespace(config_dir=str(tmp_path), settings=None, services=None)
    plugin = Cgi(node, env)
    headers = Headers([(b"host", b"app.example"), (b"content-type", b"text/plain"), (b"x-thing", b"1"),
                       (b"x-thing", b"2"), (b"proxy", b"http://evil"), (b"bad_name", b"x")])
    req = Request("POST", "/cgi/app/extra/path", "a=1", "1.1", headers, Body.from_bytes(b"hello"), "https",
                  "app.example")
    ctx = SimpleNamespace(request=req, conn=SimpleNamespace(peer=("192.0.2.9", 4444), local=("10.0.0.1", 8443)))
    out = plugin.environment(ctx, {"script_name": "/cgi/app", "env": {"APP_MODE": "test"}})
    assert out["SCRIPT_NAME"] == "/cgi/app" and out["PATH_INFO"] == "/extra/path"
    assert out["QUERY_STRING"] == "a=1" and out["REQUEST_METHOD"] == "POST"
    assert out["CONTENT_LENGTH"] == "5" and out["CONTENT_TYPE"] == "text/plain"
    assert out["HTTP_X_THING"] == "1, 2" and "HTTP_PROXY" not in out and "HTTP_BAD_NAME" not in out
    assert out["REMOTE_ADDR"] == "192.0.2.9" and out["SERVER_PORT"] == "8443" and out["HTTPS"] == "on"
    assert out["APP_MODE"] == "test" and out["GATEWAY_INTERFACE"] == "CGI/1.1"
    assert "HOME" not in out and "LD_PRELOAD" not in out
