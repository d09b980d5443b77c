"""End to end: CGI programs run by a real vaned (environment, stdin, status, timeout, limits)."""

import hashlib
import json
import os
import shutil
import sys
import tempfile
import textwrap

import httpx
import pytest

from tests.support.config import rule, write_config
from tests.support.daemon import Vaned
from tests.support.net import curl, free_port

pytestmark = pytest.mark.slow

SCRIPTS = {
    "env.cgi": """
        import hashlib, json, os, sys
        body = sys.stdin.buffer.read()
        out = json.dumps({"env": dict(os.environ), "sha256": hashlib.sha256(body).hexdigest(), "len": len(body)})
        sys.stdout.write("Content-Type: application/json\\r\\nX-Script: env\\r\\n\\r\\n" + out)
    """,
    "status.cgi": """
        import sys
        sys.stdout.write("Status: 404 Not Here\\nContent-Type: text/plain\\n\\nmissing\\n")
    """,
    "redirect.cgi": """
        print("Location: https://example.com/elsewhere")
        print()
    """,
    "slow.cgi": """
        import sys, time
        time.sleep(5)
        print("Content-Type: text/plain\\n\\nlate")
    """,
    "stream.cgi": """
        import sys
        sys.stdout.write("Content-Type: application/octet-stream\\n\\n")
        sys.stdout.flush()
        block = bytes(range(256)) * 256
        for _ in range(int(__import__("os").environ.get("QUERY_STRING") or "1")):
            sys.stdout.buffer.write(block)
    """,
    "noheader.cgi": """
        import sys
        sys.stderr.write("boom\\n")
        sys.exit(3)
    """,
}


@pytest.fixture(scope="module")
def world_dir():
    """A directory another user can enter (pytest's own temp dirs are private to root)."""
    path = tempfile.mkdtemp(prefix="vane-cgi-")
    os.chmod(path, 0o755)
    script = os.path.join(path, "whoami.cgi")
    with open(script, "w") as f:
        f.write('#!/bin/sh\nprintf "Content-Type: text/plain\\n\\n"\nid -u\nid -g\n')
    os.chmod(script, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def env(tmp_path_factory, world_dir):
    root = tmp_path_factory.mktemp("vaned-cgi")
    (root / "bin").mkdir()
    for name, code in SCRIPTS.items():
        path = root / "bin" / name
        path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(code))
        path.chmod(0o755)
    port = free_port()
    listen = f"127.0.0.1:{port}"

    def r(name, host, **inputs):
        return rule(name, {"cgi": {"input": inputs}}, listen=listen, match={"req.host": host})

    write_config(root, {"cgi.json": [
        r("env", "env.test", script="bin/env.cgi", script_name="/cgi", env={"APP_MODE": "{{req.header.x-mode}}"}),
        r("status", "status.test", script="bin/status.cgi"),
        r("redirect", "redirect.test", script="bin/redirect.cgi"),
        r("slow", "slow.test", script="bin/slow.cgi", timeout=0.5),
        r("stream", "stream.test", script="bin/stream.cgi", max_output=1024 * 1024),
        r("noheader", "noheader.test", script="bin/noheader.cgi"),
        r("whoami", "whoami.test", script=os.path.join(world_dir, "whoami.cgi"), uid=65534, gid=65534),
    ]}, config={})
    vaned = Vaned(root).wait_accepting(port)
    yield {"url": f"http://127.0.0.1:{port}", "vaned": vaned}
    vaned.stop()


def test_environment_and_stdin(env):
    body = b"x" * 300000
    r = httpx.post(env["url"] + "/cgi/extra?a=1", content=body, timeout=30,
                   headers={"host": "env.test", "content-type": "text/plain", "x-mode": "blue", "proxy": "evil"})
    assert r.status_code == 200 and r.headers["x-script"] == "env"
    info = json.loads(r.text)
    e = info["env"]
    assert info["sha256"] == hashlib.sha256(body).hexdigest() and info["len"] == len(body)
    assert e["REQUEST_METHOD"] == "POST" and e["QUERY_STRING"] == "a=1"
    assert e["SCRIPT_NAME"] == "/cgi" and e["PATH_INFO"] == "/extra"
    assert e["CONTENT_LENGTH"] == str(len(body)) and e["CONTENT_TYPE"] == "text/plain"
    assert e["HTTP_X_MODE"] == "blue" and e["APP_MODE"] == "blue" and "HTTP_PROXY" not in e
    assert e["GATEWAY_INTERFACE"] == "CGI/1.1" and e["REMOTE_ADDR"] == "127.0.0.1"
    assert "VANE_MGMT_UNIX" not in e and "HOME" not in e


def test_chunked_request_body_gets_a_content_length(env):
    def gen():
        yield b"a" * 1000
        yield b"b" * 1000

    r = httpx.post(env["url"] + "/cgi", content=gen(), headers={"host": "env.test"}, timeout=30)
    info = json.loads(r.text)
    assert info["len"] == 2000 and info["env"]["CONTENT_LENGTH"] == "2000"


def test_status_and_location(env):
    r = httpx.get(env["url"] + "/", headers={"host": "status.test"})
    assert r.status_code == 404 and r.text == "missing\n"
    r = httpx.get(env["url"] + "/", headers={"host": "redirect.test"})
    assert r.status_code == 302 and r.headers["location"] == "https://example.com/elsewhere"


def test_timeout_kills_and_answers_504(env):
    r = httpx.get(env["url"] + "/", headers={"host": "slow.test"}, timeout=10)
    assert r.status_code == 504


def test_streamed_output_and_max_output(env):
    r = httpx.get(env["url"] + "/?8", headers={"host": "stream.test"}, timeout=10)
    assert r.status_code == 200 and len(r.content) == 8 * 65536
    out = curl(env["url"] + "/?64", "-H", "Host: stream.test")      # 4 MiB > max_output: cut short
    assert out.returncode != 0 and len(out.stdout) <= 1024 * 1024 + 65536


def test_program_without_header_block_is_502(env):
    r = httpx.get(env["url"] + "/", headers={"host": "noheader.test"})
    assert r.status_code == 502
    assert "boom" in env["vaned"].stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_uid_and_gid_are_dropped(env):
    r = httpx.get(env["url"] + "/", headers={"host": "whoami.test"})
    assert r.status_code == 200 and r.text.split() == ["65534", "65534"]
