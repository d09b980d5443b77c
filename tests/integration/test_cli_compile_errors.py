"""What an operator sees from `vane compile DIR` and `vaned --config DIR --check` for hostile
configs: exit code 1 and one line per error naming the file and the JSON pointer, never a
Python traceback; both tools check the same things (the offline compile links too)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import pytest
import trustme

from tests.support.config import RESPOND, rule
from tests.support.daemon import ROOT, VANE, VANED, clean_environ

pytestmark = pytest.mark.timeout(120)

LISTEN = "127.0.0.1:18080"
EXT = {"output": {"success": RESPOND, "failure": RESPOND}}


@pytest.fixture
def conf():
    """A config dir any user can reach (some cases run the tools as an unprivileged user)."""
    base = Path(tempfile.mkdtemp(prefix="vc", dir="/tmp"))
    base.chmod(0o755)
    (base / "rules").mkdir()
    (base / "rules").chmod(0o755)
    yield base
    for path in (base / "rules", base):
        if path.exists():
            path.chmod(0o755)
    shutil.rmtree(base, ignore_errors=True)


def write(base: Path, rel: str, content) -> Path:
    path = base / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, (bytes, bytearray)):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    path.chmod(0o644)
    return path


def run_tool(tool: str, base: Path, env: dict[str, str] | None = None,
             unprivileged: bool = False) -> subprocess.CompletedProcess:
    argv = [*VANE, "compile", str(base)] if tool == "vane compile" else [*VANED, "--config", str(base), "--check"]
    full = clean_environ()
    full.update({"VANE_MGMT_HTTP_PORT": "", "VANE_STATE_DIR": str(base / "state")}, **(env or {}))
    if unprivileged and os.geteuid() == 0:  # root reads any directory: run as nobody
        argv = [*AS_NOBODY, *argv]
    return subprocess.run(argv, env=full, cwd="/tmp" if unprivileged else str(ROOT), capture_output=True,
                          text=True, timeout=60)


AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def can_run_unprivileged() -> bool:
    if os.geteuid() != 0:
        return True
    if shutil.which("setpriv") is None:
        return False
    probe = subprocess.run([*AS_NOBODY, *VANE, "--version"], cwd="/tmp", capture_output=True, timeout=60)
    return probe.returncode == 0


# -- the cases: each writes a config and names the lines the tools must print --------------------

def deep_json(base: Path) -> list[str]:
    write(base, "rules/deep.json", "[" * 1000 + "]" * 1000)
    return ["rules/deep.json: /: nested too deeply: more than 256 levels of arrays and objects"]


def long_integer(base: Path) -> list[str]:
    write(base, "rules/big.json", '{"rule": "big", "priority": ' + "7" * 5000 + "}")
    return ["rules/big.json: /: invalid JSON at line 1 column 29: an integer literal longer than 4300 digits"]


def non_utf8_env(base: Path) -> list[str]:
    write(base, "rules/ok.json", rule("ok", RESPOND, listen=LISTEN))
    write(base, ".env", b"VANE_LOG_FORMAT=text\nGREETING=gr\xfc\xdf\n")
    return [".env: /: not UTF-8: byte 0xfc at line 2 column 12 (invalid start byte)"]


def unreadable_rules_dir(base: Path) -> list[str]:
    write(base, "rules/ok.json", rule("ok", RESPOND, listen=LISTEN))
    (base / "rules").chmod(0)
    return ["rules: /: cannot list the rules directory: Permission denied"]


def garbage_wasm(base: Path) -> list[str]:
    write(base, "wasm/auth.wasm", b"\x00asm\x01\x00\x00\x00 this is no module")
    write(base, "config.json", {"plugins": {"auth": {"wasm": "wasm/auth.wasm", "branches": ["success", "failure"]}}})
    write(base, "rules/auth.json", rule("auth", {"auth": EXT}, listen=LISTEN))
    return ["config.json: /plugins/auth/wasm: "]


def command_outside_bin(base: Path) -> list[str]:
    (base / "bin").mkdir()
    write(base, "config.json", {"plugins": {"score": {"command": "/bin/true", "branches": ["success", "failure"]}}})
    write(base, "rules/score.json", [rule("score", {"score": EXT}, listen=LISTEN)])
    return [f"config.json: /plugins/score/command: command plugin score: /bin/true is not under {base}/bin"]


def cgi_not_executable(base: Path) -> list[str]:
    write(base, "bin/app.cgi", "#!/bin/sh\necho\n")
    write(base, "rules/cgi.json", rule("cgi", {"cgi": {"input": {"script": "bin/app.cgi"}}}, listen=LISTEN))
    return [f"rules/cgi.json: /flow/cgi: cgi: script {base}/bin/app.cgi is not executable"]


def empty_cert(base: Path) -> list[str]:
    write(base, "rules/tls.json", rule("tls", RESPOND, listen=LISTEN, tls={"cert": "", "key": "certs/site.key"}))
    return ["rules/tls.json: /tls/cert: must not be empty"]


def cert_is_dev_zero(base: Path) -> list[str]:
    leaf = trustme.CA().issue_cert("site.test")
    (base / "certs").mkdir()
    leaf.private_key_pem.write_to_path(str(base / "certs/site.key"))
    write(base, "rules/tls.json", rule("tls", RESPOND, listen=LISTEN, tls={"cert": "/dev/zero", "key": "certs/site.key"}))
    return ["rules/tls.json: /tls/cert: /dev/zero: not a regular file (a character device)"]


def null_rule_file(base: Path) -> list[str]:
    write(base, "rules/ok.json", rule("ok", RESPOND, listen=LISTEN))
    write(base, "rules/null.json", "null")
    return ["rules/null.json: /: a rule file holds one rule object or a list of rules (found null)"]


def odd_rule_entries(base: Path) -> list[str]:
    write(base, "rules/ok.json", rule("ok", RESPOND, listen=LISTEN))
    (base / "rules/a-dir.json").mkdir()
    os.mkfifo(base / "rules/b-fifo.json")
    (base / "rules/c-gone.json").symlink_to("gone.json")
    return ["rules/a-dir.json: /: not a regular file (a directory)",
            "rules/b-fifo.json: /: not a regular file (a FIFO)",
            "rules/c-gone.json: /: dangling symbolic link (to 'gone.json')"]


CASES: dict[str, Callable[[Path], list[str]]] = {
    f.__name__: f for f in (deep_json, long_integer, non_utf8_env, unreadable_rules_dir, garbage_wasm,
                            command_outside_bin, cgi_not_executable, empty_cert, cert_is_dev_zero,
                            null_rule_file, odd_rule_entries)}


@pytest.mark.parametrize("tool", ["vane compile", "vaned --check"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_config_is_reported_with_file_and_pointer(conf, tool, case):
    unprivileged = case == "unreadable_rules_dir"
    if unprivileged and not can_run_unprivileged():
        pytest.skip("cannot run the tools as an unprivileged user here")
    expected = CASES[case](conf)
    res = run_tool(tool, conf, unprivileged=unprivileged)
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr and "<config>" not in res.stderr, res.stderr
    lines = [line.removeprefix("vaned: ") for line in res.stderr.splitlines()]
    for want in expected:
        assert any(line.startswith(want) for line in lines), (want, res.stderr)
    assert len(lines) == len(expected), res.stderr


@pytest.mark.parametrize("tool", ["vane compile", "vaned --check"])
def test_bad_log_level_names_the_variable(conf, tool):
    write(conf, "rules/ok.json", rule("ok", RESPOND, listen=LISTEN))
    res = run_tool(tool, conf, env={"VANE_LOG_LEVEL": "loud"})
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    assert "VANE_LOG_LEVEL: expected one of debug, info, warning, error, critical, got 'loud'" in res.stderr


def test_offline_compile_json_lists_link_errors(conf):
    command_outside_bin(conf)
    res = subprocess.run([*VANE, "--json", "compile", str(conf)], capture_output=True, text=True, timeout=60,
                         cwd=str(ROOT), env=clean_environ())
    assert res.returncode == 1
    assert json.loads(res.stdout)["errors"] == [{
        "kind": "Compile", "file": "config.json", "path": "/plugins/score/command",
        "message": f"command plugin score: /bin/true is not under {conf}/bin"}]


def test_offline_compile_of_a_good_config_links_and_writes_nothing(conf):
    """The WASM module is compiled to check it, but the cache of VANE_STATE_DIR is left alone."""
    import wasmtime

    write(conf, "bin/score", "#!/bin/sh\necho '{\"branch\": \"success\"}'\n")
    (conf / "bin/score").chmod(0o755)
    write(conf, "wasm/p.wasm", wasmtime.wat2wasm(
        '(module (memory (export "memory") 1) (func (export "alloc") (param i32) (result i32) i32.const 0)'
        ' (func (export "handle") (param i32 i32) (result i64) i64.const 0))'))
    write(conf, "config.json", {"plugins": {"score": {"command": "bin/score", "branches": ["success", "failure"]},
                                            "mod": {"wasm": "wasm/p.wasm", "branches": ["success", "failure"]}}})
    write(conf, "rules/score.json", rule("score", {"score": {"output": {"success": {"mod": EXT}, "failure": RESPOND}}},
                                         listen=LISTEN))
    (conf / "state").mkdir()
    res = run_tool("vane compile", conf)
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert "score" in res.stdout and "mod" in res.stdout
    assert list((conf / "state").rglob("*")) == []
    res = run_tool("vaned --check", conf)
    assert res.returncode == 0, (res.stdout, res.stderr)
