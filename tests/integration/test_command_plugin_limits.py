"""A ``command`` plugin cannot flood memory: its stdout is read up to the reply limit and no
further, the program is killed, and the call takes the ``failure`` branch (DESIGN.md §6).
Real child processes, a real vaned."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import tracemalloc

import pytest

from tests.support.config import rule
from tests.support.net import free_ports, wait_until
from vane.config.settings import Settings
from vane.engine.plugin import LinkEnv
from vane.plugins.external.base import MAX_REPLY, ExternalError
from vane.plugins.registry import registry_from_config

pytestmark = pytest.mark.timeout(60)

FLOOD_MIB = 300


def flood_script(config_dir, pid_file) -> str:
    """bin/flood: writes its pid, then FLOOD_MIB MiB to stdout, then a valid reply."""
    bin_dir = config_dir / "bin"
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / "flood"
    path.write_text(f"""#!{sys.executable}
import os, sys
with open({str(pid_file)!r}, "w") as fh:
    fh.write(str(os.getpid()))
chunk = b"x" * (1 << 20)
for _ in range({FLOOD_MIB}):
    sys.stdout.buffer.write(chunk)
sys.stdout.buffer.write(b'{{"branch": "success"}}')
""")
    path.chmod(0o755)
    return "bin/flood"


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1].startswith("Z")  # a zombie is dead too
    except FileNotFoundError:
        return True


def command_plugin(config_dir, program: str, timeout: float = 30.0):
    registry, errors = registry_from_config({"plugins": {"flood": {
        "command": program, "branches": ["success", "failure"], "timeout": timeout}}})
    assert not errors
    (spec,) = registry.externals()

    class FakeNode:  # the plugin reads only its spec from the node
        pass

    node = FakeNode()
    node.spec = spec
    return spec.load()(node, LinkEnv(Settings(), str(config_dir)))


def test_reply_past_the_limit_is_an_error_after_reading_only_the_limit(tmp_path):
    pid_file = tmp_path / "pid"
    plugin = command_plugin(tmp_path, flood_script(tmp_path, pid_file))
    tracemalloc.start()
    try:
        start = time.monotonic()
        with pytest.raises(ExternalError, match=f"reply larger than {MAX_REPLY} bytes"):
            plugin.call(b"{}")
        elapsed = time.monotonic() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 15  # at once, not after the 30 s timeout
    assert peak < 16 * MAX_REPLY, peak  # nowhere near the FLOOD_MIB MiB written
    assert wait_until(lambda: gone(int(pid_file.read_text())), timeout=5)


def test_reply_within_the_limit_still_works(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "echo").write_text(f"#!{sys.executable}\nimport sys, json\nreq = json.load(sys.stdin)\n"
                                  "print(json.dumps({'branch': 'success', 'store': {'n': str(len(req['input']['pad']))}}))\n")
    (bin_dir / "echo").chmod(0o755)
    plugin = command_plugin(tmp_path, "bin/echo")
    request = json.dumps({"input": {"pad": "p" * 3_000_000}, "kv": {}}).encode()  # larger than a pipe buffer
    assert plugin.parse(plugin.call(request)) == ("success", {"n": "3000000"})


def vm_hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def http_get(port: int, host: str, timeout: float = 20.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_flooding_program_does_not_grow_the_daemon_and_takes_the_failure_branch(lab):
    (port,) = free_ports(1)
    pid_file = lab.base / "flood.pid"
    program = flood_script(lab.conf, pid_file)
    (lab.conf / "config.json").write_text(json.dumps({"plugins": {"flood": {
        "command": program, "branches": ["success", "failure"], "timeout": 30}}}))
    flow = {"flood": {"output": {"success": {"respond": {"input": {"body": "flooded"}}},
                                 "failure": {"respond": {"input": {"status": 502, "body": "plugin failed"}}}}}}
    d = lab.vaned({"10-flood.json": [
        rule("flood", flow, listen=f"127.0.0.1:{port}", match={"req.host": "flood.test"}),
        rule("warm", {"respond": {"input": {"body": "warm"}}}, listen=f"127.0.0.1:{port}",
             match={"req.host": "warm.test"})]})
    d.wait_listening(port)
    assert http_get(port, "warm.test").endswith(b"warm")  # the HTTP path has run once: its heap is settled
    before = vm_hwm_kib(d.pid)
    start = time.monotonic()
    reply = http_get(port, "flood.test")
    assert time.monotonic() - start < 15  # at once, not after the 30 s timeout
    assert reply.startswith(b"HTTP/1.1 502") and reply.endswith(b"plugin failed"), reply[:200]
    assert pid_file.exists()
    assert wait_until(lambda: gone(int(pid_file.read_text())), timeout=5)
    grown_mib = (vm_hwm_kib(d.pid) - before) / 1024
    assert grown_mib < 32, f"vaned's peak RSS grew by {grown_mib:.0f} MiB for {FLOOD_MIB} MiB of plugin output"
    assert os.path.exists(f"/proc/{d.pid}")
