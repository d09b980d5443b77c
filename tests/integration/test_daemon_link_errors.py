"""A running vaned whose config compiles but whose plugins cannot be set up: at boot it exits
non-zero, on reload the old graph keeps serving; either way every failing node is reported
with its file and JSON pointer (DESIGN.md §7)."""

from __future__ import annotations

import json
import re
import socket

import pytest

from tests.support.backends import echo
from tests.support.config import proxy, rule
from tests.support.net import connect, free_ports, recv_all

pytestmark = pytest.mark.timeout(60)

RESPOND = {"respond": {"input": {"body": "ok"}}}


def broken_link_config(lab, port: int) -> list[str]:
    """A command plugin outside bin/ and a certificate that is a device; the lines vaned must print."""
    (lab.conf / "bin").mkdir(exist_ok=True)
    (lab.conf / "config.json").write_text(json.dumps(
        {"plugins": {"score": {"command": "/bin/true", "branches": ["success", "failure"]}}}))
    lab.write_rule("50-score.json", [rule("score", {"score": {"output": {"success": RESPOND, "failure": RESPOND}}},
                                          listen=f"127.0.0.1:{port}", match={"req.host": "score.test"})])
    lab.write_rule("60-tls.json", rule("tls", RESPOND, listen=f"127.0.0.1:{port}", match={"req.host": "tls.test"},
                                       tls={"cert": "/dev/zero", "key": "/dev/zero"}))
    return [rf"config\.json: /plugins/score/command: command plugin score: /bin/true is not under {lab.conf}/bin",
            r"rules/60-tls\.json: /tls: /dev/zero: not a regular file \(a character device\)"]


def test_boot_with_plugins_that_cannot_be_set_up_exits_with_every_error(lab):
    (port,) = free_ports(1)
    expected = broken_link_config(lab, port)
    d = lab.vaned(ready=False)
    assert d.wait() == 1
    for pattern in expected:
        assert d.find(r"config error: " + pattern) >= 0, d.stderr
    assert "Traceback" not in d.stderr and "<config>" not in d.stderr


def test_reload_with_plugins_that_cannot_be_set_up_keeps_the_old_graph(lab):
    backend = lab.tcp(echo)
    port, other = free_ports(2)
    d = lab.vaned({"10-fwd.json": rule("fwd", proxy(backend.target), listen=f"127.0.0.1:{port}")})
    d.wait_listening(port)
    old_hash = d.cli_json("stats")["graph_hash"]
    mark = len(d.lines)
    expected = broken_link_config(lab, other)
    for pattern in expected:
        d.wait_log(r"reload failed, the running configuration stays: " + pattern, since=mark)
    res = d.cli("reload")
    assert res.returncode == 1, (res.stdout, res.stderr)
    for pattern in expected:
        assert re.search(pattern, res.stderr), res.stderr
    assert "Traceback" not in d.stderr + res.stderr and "<config>" not in res.stderr
    with connect(port) as s:
        s.sendall(b"old graph")
        s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == b"old graph"
    assert d.cli_json("stats")["graph_hash"] == old_hash
