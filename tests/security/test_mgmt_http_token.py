"""HTTP management is off unless a token exists (env or token file), in a real vaned; ``vane
--http`` finds the token on its own; a hostile token file (FIFO, device, huge, empty, binary)
neither hangs nor opens management."""

from __future__ import annotations

import os
import subprocess

import httpx
import pytest

from tests.support.daemon import ROOT, VANE, clean_environ
from tests.support.net import free_ports, refused
from vane.mgmt.token import MAX_TOKEN_BYTES, find_token, read_token_file

pytestmark = pytest.mark.timeout(60)

TOKEN = "9c2f6b1e0d3a4f5b8e7d6c5b4a392817"


def vane_http(port: int, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``vane --http`` with an environment holding no VANE_* but ``env``."""
    full = clean_environ()
    full.update(env or {})
    return subprocess.run([*VANE, "--http", f"http://127.0.0.1:{port}", *args], env=full, cwd=str(ROOT),
                          capture_output=True, text=True, timeout=20)


def test_without_a_token_http_management_is_off(lab):
    (port,) = free_ports(1)
    d = lab.vaned(env={"VANE_MGMT_HTTP_PORT": str(port), "VANE_MGMT_HTTP_TOKEN_FILE": str(lab.base / "none")})
    d.wait_log(r"INFO vane\.mgmt: management HTTP is off: no token \(VANE_MGMT_HTTP_TOKEN is unset and the "
               r"token file \S+/none was not found\)")
    assert refused(port)
    assert d.count("management HTTP") == 1
    assert d.cli_json("ping")["pong"]  # the unix socket is there


def test_the_token_file_turns_it_on_and_vane_finds_the_token(lab):
    (port,) = free_ports(1)
    token_file = lab.base / "mgmt-http.token"
    token_file.write_text(f"  {TOKEN}\n\n")
    d = lab.vaned(env={"VANE_MGMT_HTTP_PORT": str(port), "VANE_MGMT_HTTP_TOKEN_FILE": str(token_file)})
    d.wait_log(r"management HTTP listening .*token=\S+mgmt-http\.token")
    url = f"http://127.0.0.1:{port}"
    assert httpx.post(f"{url}/v1/ping", json={}).status_code == 401
    assert httpx.post(f"{url}/v1/ping", json={}, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    # vane --http: the token file when the variable is unset ...
    found = vane_http(port, "ping", env={"VANE_MGMT_HTTP_TOKEN_FILE": str(token_file)})
    assert found.returncode == 0, found.stderr
    # ... the variable (or --token-env's) first ...
    wrong = vane_http(port, "ping", env={"VANE_MGMT_HTTP_TOKEN_FILE": str(token_file), "VANE_MGMT_HTTP_TOKEN": "x"})
    assert wrong.returncode == 1 and "Unauthorized" in wrong.stderr
    mine = vane_http(port, "--token-env", "MY_TOKEN", "ping", env={"MY_TOKEN": TOKEN})
    assert mine.returncode == 0, mine.stderr
    # ... and without either, the daemon refuses it
    none = vane_http(port, "ping", env={"VANE_MGMT_HTTP_TOKEN_FILE": str(lab.base / "none")})
    assert none.returncode == 1 and "Unauthorized" in none.stderr


def test_public_management_needs_a_token_and_takes_the_public_name(lab):
    (port,) = free_ports(1)
    d = lab.vaned(env={"VANE_MGMT_HTTP_PORT": str(port), "VANE_MGMT_HTTP_PUBLIC": "1",
                       "VANE_MGMT_HTTP_TOKEN_FILE": str(lab.base / "none")}, ready=False)
    assert d.wait() != 0
    assert "VANE_MGMT_HTTP_PUBLIC=1 needs a token" in d.stderr and "Traceback" not in d.stderr
    (lab.base / "t").write_text(TOKEN)
    d = lab.vaned(env={"VANE_MGMT_HTTP_PORT": str(port), "VANE_MGMT_HTTP_PUBLIC": "1",
                       "VANE_MGMT_HTTP_HOST": "mgmt.example.net", "VANE_MGMT_HTTP_TOKEN_FILE": str(lab.base / "t")})
    d.wait_log(r"management HTTP listening .*0\.0\.0\.0")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for host, status in (("mgmt.example.net", 200), ("localhost", 200), ("evil.example", 403)):
        r = httpx.post(f"http://127.0.0.1:{port}/v1/ping", json={}, headers={**auth, "Host": host})
        assert r.status_code == status, (host, r.text)


@pytest.mark.parametrize("kind", ["empty", "fifo"])
def test_a_broken_token_file_keeps_it_off_with_one_warning(lab, kind):
    """A FIFO nobody writes to must not hang the boot; an empty file is no token."""
    (port,) = free_ports(1)
    path = lab.base / "mgmt-http.token"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.write_text(" \n")
    d = lab.vaned(env={"VANE_MGMT_HTTP_PORT": str(port), "VANE_MGMT_HTTP_TOKEN_FILE": str(path)})
    why = "is empty" if kind == "empty" else "is not a regular file"
    d.wait_log(rf"WARNING vane\.mgmt: management HTTP is off: no token .*{why}")
    assert refused(port)
    assert d.count("management HTTP") == 1


def test_hostile_token_files_are_read_with_bounds(tmp_path):
    big = tmp_path / "big"
    big.write_bytes(b"a" * (MAX_TOKEN_BYTES + 1))
    binary = tmp_path / "binary"
    binary.write_bytes(b"tok\x00en")
    spaced = tmp_path / "spaced"
    spaced.write_bytes(b"to ken\n")
    link = tmp_path / "zero"
    link.symlink_to("/dev/zero")
    for path, problem in ((big, "is larger than"), (binary, "printable ASCII"), (spaced, "printable ASCII"),
                          (link, "is not a regular file"), (tmp_path, "is not a regular file"),
                          (tmp_path / "nope" / "x", "was not found")):
        got = read_token_file(str(path))
        assert got.token is None and problem in got.problem, (path, got)
    exact = tmp_path / "exact"
    exact.write_text("\t" + "b" * 64 + "\r\n")
    assert read_token_file(str(exact)).token == "b" * 64
    assert find_token("from-env", str(exact)).token == "from-env"
    assert find_token(None, str(exact)).source == str(exact)
    assert find_token(None, "").token is None
