"""External plugins through the executor: http, unix, command and wasm drivers, real processes."""

import json
import stat
import sys
import time

import pytest
import wasmtime
from gevent.pywsgi import WSGIServer

from tests.support.fakeplugins import TEST_SPECS, RecCtx
from vane.compile.flows import FlowBuilder
from vane.config.errors import ConfigError
from vane.config.settings import Settings
from vane.engine.executor import walk
from vane.engine.kv import KV
from vane.engine.plugin import LinkEnv
from vane.engine.template import Limits
from vane.plugins.registry import Registry, registry_from_config

FLOW = {"xp": {"input": {"who": "{{conn.ip}}"}, "output": {
    "success": {"record": {"input": {"r": "ok", "v": "{{plugin.xp.k}}"}}},
    "failure": {"record": {"input": {"r": "failed"}}}}}}


def build(decl, config_dir, quiet=3.0):
    reg, errors = registry_from_config({"plugins": {"xp": decl}})
    assert not errors
    registry = Registry([*(s for s in TEST_SPECS), *reg.externals()])
    errs: list[ConfigError] = []
    root = FlowBuilder(registry, Limits(), "rules/t.json", "t", errs).build(FLOW, "/flow", "l4")
    assert not errs, errs
    env = LinkEnv(Settings(external_plugin_quiet_period=quiet, state_dir=str(config_dir)), str(config_dir))
    for node in root.walk():
        node.impl = node.spec.load()(node, env)
    return root


def run(root, ip="10.0.0.1"):
    ctx = RecCtx(kv=KV({"conn.ip": ip}))
    walk(root, ctx, 5)
    return ctx.result


def wsgi_app(calls):
    def app(environ, start_response):
        body = json.loads(environ["wsgi.input"].read())
        calls.append(body)
        if body["input"]["who"] == "10.9.9.9":
            start_response("500 Oops", [("content-type", "text/plain")])
            return [b"no"]
        reply = {"branch": "success", "store": {"k": body["kv"].get("conn.ip", "")}}
        start_response("200 OK", [("content-type", "application/json")])
        return [json.dumps(reply).encode()]
    return app


def test_http_driver_and_breaker(tmp_path):
    calls = []
    server = WSGIServer(("127.0.0.1", 0), wsgi_app(calls), log=None)
    server.start()
    try:
        decl = {"http": f"http://127.0.0.1:{server.server_port}/x", "branches": ["success", "failure"],
                "reads": ["conn.ip"]}
        root = build(decl, tmp_path, quiet=0.3)
        assert run(root) == {"r": "ok", "v": "10.0.0.1"}
        assert calls[-1] == {"input": {"who": "10.0.0.1"}, "kv": {"conn.ip": "10.0.0.1"}}
        assert run(root, "10.9.9.9") == {"r": "failed"}  # HTTP 500 = runtime error: breaker opens
        n = len(calls)
        assert run(root) == {"r": "failed"} and len(calls) == n  # quiet period: no I/O
        time.sleep(0.35)
        assert run(root) == {"r": "ok", "v": "10.0.0.1"}
    finally:
        server.stop()


def test_unix_driver(tmp_path):
    from gevent import socket as gsocket
    path = str(tmp_path / "p.sock")
    listener = gsocket.socket(gsocket.AF_UNIX, gsocket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    server = WSGIServer(listener, wsgi_app([]), log=None)
    server.start()
    try:
        root = build({"unix": path, "branches": ["success", "failure"], "reads": ["conn.ip"]}, tmp_path)
        assert run(root) == {"r": "ok", "v": "10.0.0.1"}
    finally:
        server.stop()


def write_script(tmp_path, name, body):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return f"bin/{name}"


def test_command_driver_clean_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("VANE_MGMT_HTTP_TOKEN", "secret")
    monkeypatch.setenv("LD_PRELOAD", "")
    script = write_script(tmp_path, "score.py", """
import json, os, sys
req = json.load(sys.stdin)
leak = [k for k in os.environ if k.startswith(("VANE_", "LD_", "PYTHON"))]
print(json.dumps({"branch": "success", "store": {"k": req["input"]["who"] + ("!" + ",".join(leak) if leak else "")}}))
""")
    root = build({"command": script, "branches": ["success", "failure"], "env": {"MODE": "x"}}, tmp_path)
    assert run(root) == {"r": "ok", "v": "10.0.0.1"}


def test_command_driver_timeout_and_bad_reply(tmp_path):
    slow = write_script(tmp_path, "slow.py", "import time\ntime.sleep(5)\n")
    root = build({"command": slow, "branches": ["success", "failure"], "timeout": 0.3}, tmp_path)
    t0 = time.monotonic()
    assert run(root) == {"r": "failed"}
    assert time.monotonic() - t0 < 2
    bad = write_script(tmp_path, "bad.py", "print('not json')\n")
    root = build({"command": bad, "branches": ["success", "failure"]}, tmp_path)
    assert run(root) == {"r": "failed"}


def test_command_must_live_under_bin(tmp_path):
    (tmp_path / "bin").mkdir()
    with pytest.raises(ValueError, match="not under"):
        build({"command": "/bin/true", "branches": ["success", "failure"]}, tmp_path)


WAT = """
(module
  (memory (export "memory") 2)
  (global $next (mut i32) (i32.const 1024))
  (data (i32.const 16) "{\\"branch\\":\\"success\\",\\"store\\":{\\"k\\":\\"wasm\\"}}")
  (func (export "alloc") (param $n i32) (result i32)
    (local $p i32) (local.set $p (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $n))) (local.get $p))
  (func (export "handle") (param $p i32) (param $n i32) (result i64)
    %s
    (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 41))))
"""


def wasm_file(tmp_path, body=""):
    path = tmp_path / "wasm" / "p.wasm"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(wasmtime.wat2wasm(WAT % body))
    return "wasm/p.wasm"


def test_wasm_driver_and_cache(tmp_path):
    root = build({"wasm": wasm_file(tmp_path), "branches": ["success", "failure"]}, tmp_path)
    assert run(root) == {"r": "ok", "v": "wasm"}
    assert list((tmp_path / "wasm").glob("*.cwasm"))  # precompiled, content-keyed
    root = build({"wasm": wasm_file(tmp_path), "branches": ["success", "failure"]}, tmp_path)
    assert run(root) == {"r": "ok", "v": "wasm"}


def test_wasm_fuel_and_trap(tmp_path):
    spin = "(loop $l (br $l))"
    root = build({"wasm": wasm_file(tmp_path, spin), "branches": ["success", "failure"], "fuel": 100000}, tmp_path)
    assert run(root) == {"r": "failed"}
    trap = "(unreachable)"
    root = build({"wasm": wasm_file(tmp_path, trap), "branches": ["success", "failure"]}, tmp_path)
    assert run(root) == {"r": "failed"}
