"""End to end: the static plugin behind a real vaned (ranges, validators, safety, encodings)."""

import gzip
import hashlib
import os
import socket

import gevent
import httpx
import pytest

from tests.support.config import rule, write_config
from tests.support.daemon import Vaned
from tests.support.http_backend import pattern
from tests.support.net import curl, free_port

pytestmark = pytest.mark.slow


def static_flow(**inputs):
    return {"static": {"input": inputs, "output": {
        "success": {"respond": {}},
        "not_found": {"respond": {"input": {"status": 404, "body": "nothing here"}}},
        "failure": {"respond": {"input": {"status": 500, "body": "failed: {{plugin.static.error}}"}}}}}}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("vaned-static")
    site = root / "site"
    (site / "docs").mkdir(parents=True)
    (site / "index.html").write_text("<h1>home</h1>")
    (site / "docs" / "index.html").write_text("<h1>docs</h1>")
    (site / "app.js").write_text("console.log(1)\n" * 100)
    with gzip.open(site / "app.js.gz", "wb") as f:
        f.write((site / "app.js").read_bytes())
    (site / "big.bin").write_bytes(pattern(20 * 1024 * 1024))
    (site / "<b>&amp;.txt").write_text("odd name")
    (site / ".env").write_text("SECRET=1")
    (root / "secret.txt").write_text("TOP SECRET")
    os.symlink(root / "secret.txt", site / "escape.txt")
    os.symlink(site / "app.js", site / "alias.js")
    port = free_port()
    listen = f"127.0.0.1:{port}"

    def r(name, host, **inputs):
        return rule(name, static_flow(**inputs), listen=listen, match={"req.host": host})

    write_config(root, {"static.json": [
        r("files", "files.test", root="site", precompressed=True, cache_control="max-age=60"),
        r("browse", "browse.test", root="site", browse=True, index=[]),
        r("spa", "spa.test", root="site", spa=True),
        r("links", "links.test", root="site", symlinks=True),
        r("prefixed", "prefix.test", root="site", strip_prefix="/assets/"),
    ]}, config={})
    vaned = Vaned(root).wait_accepting(port)
    yield {"url": f"http://127.0.0.1:{port}", "port": port, "site": site, "vaned": vaned}
    vaned.stop()


def get(env, host, path, **headers):
    return httpx.get(env["url"] + path, headers={"host": host, **headers}, timeout=30)


def test_file_with_validators_and_types(env):
    r = get(env, "files.test", "/app.js", **{"accept-encoding": "identity"})
    assert r.status_code == 200 and r.text == "console.log(1)\n" * 100
    assert r.headers["content-type"] == "text/javascript; charset=utf-8"
    assert r.headers["etag"].startswith('W/"') and r.headers["last-modified"].endswith("GMT")
    assert r.headers["accept-ranges"] == "bytes" and r.headers["cache-control"] == "max-age=60"
    assert r.headers["vary"] == "Accept-Encoding"
    etag = r.headers["etag"]
    r304 = get(env, "files.test", "/app.js", **{"if-none-match": etag, "accept-encoding": "identity"})
    assert r304.status_code == 304 and r304.content == b"" and r304.headers["etag"] == etag
    r304 = get(env, "files.test", "/app.js", **{"if-modified-since": r.headers["last-modified"],
                                                 "accept-encoding": "identity"})
    assert r304.status_code == 304


def test_ranges(env):
    data = pattern(20 * 1024 * 1024)
    r = get(env, "files.test", "/big.bin", range="bytes=1000-1999")
    assert r.status_code == 206 and r.content == data[1000:2000]
    assert r.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
    r = get(env, "files.test", "/big.bin", range="bytes=-10")
    assert r.status_code == 206 and r.content == data[-10:]
    r = get(env, "files.test", "/big.bin", range="bytes=0-1,5-6")
    assert r.status_code == 200 and len(r.content) == len(data)
    r = get(env, "files.test", "/big.bin", range=f"bytes={len(data)}-")
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(data)}"
    out = curl(env["url"] + "/big.bin", "-H", "Host: files.test", "--http2-prior-knowledge")
    assert hashlib.sha256(out.stdout).hexdigest() == hashlib.sha256(data).hexdigest()


def test_big_range_by_sendfile_to_a_slow_reader_then_keepalive(env):
    """A 12 MiB range from the middle of a file goes out by sendfile (plain HTTP/1): a reader
    that takes it slowly gets every byte, and the connection carries the next request."""
    data = pattern(20 * 1024 * 1024)
    start, end = 5_000_001, 5_000_000 + 12 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", env["port"]), timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        s.sendall(f"GET /big.bin HTTP/1.1\r\nHost: files.test\r\nRange: bytes={start}-{end}\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(4096)
        head, body = buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 206")
        want = end - start + 1
        reads = 0
        while len(body) < want:
            chunk = s.recv(min(65536, want - len(body)))
            assert chunk
            body += chunk
            reads += 1
            if reads % 16 == 0:
                gevent.sleep(0.01)
        assert hashlib.sha256(body).digest() == hashlib.sha256(data[start:end + 1]).digest()
        s.sendall(b"GET /app.js HTTP/1.1\r\nHost: files.test\r\nAccept-Encoding: identity\r\n\r\n")
        buf = b""
        while not buf.endswith(b"console.log(1)\n" * 2):
            chunk = s.recv(65536)
            assert chunk
            buf += chunk
        assert buf.startswith(b"HTTP/1.1 200")


def test_head_and_methods(env):
    r = httpx.head(env["url"] + "/big.bin", headers={"host": "files.test"})
    assert r.status_code == 200 and r.headers["content-length"] == str(20 * 1024 * 1024) and r.content == b""
    r = httpx.post(env["url"] + "/app.js", headers={"host": "files.test"}, content=b"x")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    r = httpx.post(env["url"] + "/missing", headers={"host": "files.test"}, content=b"x")
    assert r.status_code == 404


def raw_get(env, target):
    with socket.create_connection(("127.0.0.1", env["port"]), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: files.test\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk


@pytest.mark.parametrize("target", [
    "/../secret.txt", "/%2e%2e/secret.txt", "/docs/..%2f..%2fsecret.txt", "/docs/%2e%2e/%2e%2e/secret.txt",
    "/..%5csecret.txt", "/escape.txt", "/.env", "/app.js%00.png", "/docs/../../secret.txt",
])
def test_traversal_and_hidden_files_are_refused(env, target):
    response = raw_get(env, target)
    assert b"TOP SECRET" not in response and b"SECRET=1" not in response
    assert response.startswith(b"HTTP/1.1 404") or response.startswith(b"HTTP/1.1 400"), response[:60]


def test_symlinks_inside_the_root_when_allowed(env):
    assert get(env, "files.test", "/alias.js").status_code == 404
    assert get(env, "links.test", "/alias.js").status_code == 200
    assert get(env, "links.test", "/escape.txt").status_code == 404


def test_index_redirect_and_listing(env):
    r = get(env, "files.test", "/docs?x=1")
    assert r.status_code == 301 and r.headers["location"] == "/docs/?x=1"
    r = get(env, "files.test", "/docs/")
    assert r.text == "<h1>docs</h1>" and r.headers["content-type"] == "text/html; charset=utf-8"
    assert get(env, "files.test", "/").text == "<h1>home</h1>"
    r = get(env, "browse.test", "/")
    assert r.status_code == 200 and "&lt;b&gt;&amp;amp;.txt" in r.text and "<b>" not in r.text
    assert 'href="%3Cb%3E%26amp%3B.txt"' in r.text and ".env" not in r.text


def test_precompressed_variant(env):
    r = httpx.get(env["url"] + "/app.js", headers={"host": "files.test", "accept-encoding": "gzip"})
    assert r.headers["content-encoding"] == "gzip" and r.text == "console.log(1)\n" * 100
    assert r.headers["content-type"] == "text/javascript; charset=utf-8"
    raw = curl(env["url"] + "/app.js", "-H", "Host: files.test", "-H", "Accept-Encoding: gzip")
    assert raw.stdout[:2] == b"\x1f\x8b"
    raw = curl(env["url"] + "/app.js", "-H", "Host: files.test", "-H", "Accept-Encoding: br, gzip;q=0")
    assert raw.stdout.startswith(b"console.log")


def test_spa_and_strip_prefix(env):
    r = get(env, "spa.test", "/some/client/route")
    assert r.status_code == 200 and r.text == "<h1>home</h1>"
    assert get(env, "spa.test", "/app.js").text.startswith("console.log")
    assert get(env, "prefix.test", "/assets/app.js").text.startswith("console.log")
    assert get(env, "prefix.test", "/app.js").status_code == 404
