"""The flow executor on trees built by the compiler's FlowBuilder, with no sockets."""

import time

import pytest

from tests.support.fakeplugins import TEST_SPECS, External, RecCtx
from vane.compile.flows import FlowBuilder
from vane.config.errors import ConfigError
from vane.config.settings import Settings
from vane.engine.breaker import Breaker
from vane.engine.executor import walk
from vane.engine.kv import KV
from vane.engine.outcome import ERROR, FINISHED, TIMEOUT
from vane.engine.plugin import LinkEnv
from vane.engine.template import Limits
from vane.plugins.catalog import BUILTINS
from vane.plugins.registry import Registry

REGISTRY = Registry(tuple(s for s in BUILTINS if s.name in ("match", "ratelimit", "set")) + TEST_SPECS)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def build(flow, layer="l4", clock=None, quiet=3.0):
    errors: list[ConfigError] = []
    root = FlowBuilder(REGISTRY, Limits(), "rules/t.json", "t", errors).build(flow, "/flow", layer)
    assert not errors, [str(e) for e in errors]
    env = LinkEnv(Settings(), clock=clock)
    breaker = Breaker(quiet, clock or time.monotonic)
    for node in root.walk():
        node.impl = node.spec.load()(node, env)
        if node.external:
            node.impl.breaker = breaker
    return root, breaker


def term(name="record", **inp):
    return {name: {"input": inp}}


def test_seed_key_scoping_example():
    # `auth` reached by branch `true` of `detect` stores `user` at plugin.detect.true.auth.user
    flow = {"detect": {"input": {"branch": "true"}, "output": {
        "true": {"auth": {"output": {"success": term(who="{{plugin.detect.true.auth.user}}"),
                                     "failure": term()}}},
        "false": term()}}}
    root, _ = build(flow)
    ctx = RecCtx()
    assert walk(root, ctx, 5) is FINISHED
    assert ctx.kv.get("plugin.detect.true.auth.user") == "alice"
    assert ctx.result == {"who": "alice"}
    steps = [(p, b) for _, p, b, _ in ctx.trajectory.steps]
    assert steps == [("detect", "true"), ("auth", "success"), ("record", "")]


def test_dots_in_plugin_names_become_underscores():
    flow = {"detect": {"input": {"branch": "true"}, "output": {
        "true": {"my.plugin": {"output": {"next": term(u="{{plugin.detect.true.my_plugin.user}}")}}},
        "false": term()}}}
    root, _ = build(flow)
    ctx = RecCtx()
    walk(root, ctx, 5)
    assert ctx.result == {"u": "alice"}


def test_wildcard_branch_and_missing_key_noted():
    flow = {"detect": {"input": {"branch": "false", "store": {"x": "1"}}, "output": {
        "true": term(), "*": term(v="{{nope}}", x="{{plugin.detect.x}}")}}}
    root, _ = build(flow)
    ctx = RecCtx()
    walk(root, ctx, 5)
    assert ctx.result == {"v": "", "x": "1"}
    assert ctx.trajectory.missing == ["nope"]


def test_output_key_with_brace_is_a_flow_error():
    flow = {"detect": {"input": {"branch": "true", "store": {"a{b": "1"}}, "output": {"*": term()}}}
    root, _ = build(flow)
    ctx = RecCtx()
    assert walk(root, ctx, 5) is ERROR
    assert "braces" in ctx.trajectory.errors[0]


def test_plugin_exception_is_error_outcome_and_logged(caplog):
    root, _ = build({"boom": {"output": {"next": term()}}})
    ctx = RecCtx()
    assert walk(root, ctx, 5) is ERROR
    assert ctx.trajectory.outcome == "error"
    rec = [r for r in caplog.records if r.name == "vane.flow"][0]
    assert rec.conn == "conn-1" and rec.rule == "t" and rec.node.endswith("/flow/boom")


def test_flow_timeout():
    root, _ = build({"sleep": {"input": {"secs": 5}, "output": {"next": term()}}})
    ctx = RecCtx()
    t0 = time.monotonic()
    assert walk(root, ctx, 0.05) is TIMEOUT
    assert time.monotonic() - t0 < 1.0
    assert ctx.trajectory.outcome == "timeout"


def test_terminator_not_cut_by_flow_timeout():
    # the timeout bounds the walk only until a terminator owns the connection
    root, _ = build({"sleep": {"input": {"secs": 0.01}, "output": {"next": term()}}})
    assert walk(root, RecCtx(), 0.5) is FINISHED


def test_upgrade_continues_at_next_with_new_context_and_fresh_path():
    flow = {"auth": {"output": {"success": {"layer": {"output": {"next": {"auth": {"input": {"user": "bob"}, "output": {
        "success": term(a="{{plugin.auth.user}}"), "failure": term()}}}}}}, "failure": term()}}}
    root, _ = build(flow)
    ctx = RecCtx()
    assert walk(root, ctx, 5) is FINISHED
    # the L7 tree's root auth stores at plugin.auth.user too: its path counts from `next`
    assert ctx.kv.get("plugin.auth.user") == "alice"  # the L4 context kept its own value


def test_dispatch_priority_http_then_generic_then_terminator():
    assert REGISTRY.resolve("dual", "l7").kind.name == "HTTP_MIDDLEWARE"
    assert REGISTRY.resolve("dual", "l4").kind.name == "GENERIC_MIDDLEWARE"
    root, _ = build({"dual": {"output": {"next": term(k="{{plugin.dual.kind}}")}}}, layer="l7")
    ctx = RecCtx("l7")
    walk(root, ctx, 5)
    assert ctx.result == {"k": "http"}


def test_circuit_breaker_open_quiet_close():
    clock = Clock()
    flow = {"ext": {"output": {"success": term(r="ok"), "failure": term(r="failed")}}}
    root, breaker = build(flow, clock=clock, quiet=3.0)
    External.calls = 0

    def run():
        ctx = RecCtx()
        walk(root, ctx, 5)
        return ctx.result["r"]

    External.behaviour = "raise"
    assert run() == "failed" and External.calls == 1 and breaker.state == "open"
    External.behaviour = "ok"
    clock.now += 1.0
    assert run() == "failed" and External.calls == 1  # quiet period: I/O skipped
    clock.now += 2.5
    assert run() == "ok" and External.calls == 2 and breaker.state == "closed"
    External.behaviour = "failure"  # a failure branch opens it too
    assert run() == "failed" and breaker.state == "open"
    assert run() == "failed" and External.calls == 3
    clock.now += 3.0
    External.behaviour = "ok"
    assert run() == "ok" and breaker.state == "closed"


def test_match_set_ratelimit_builtins():
    clock = Clock()
    flow = {"set": {"input": {"var.who": "{{conn.ip}}"}, "output": {"next": {
        "match": {"input": {"left": "{{var.who}}", "op": "cidr", "right": ["10.0.0.0/8"]}, "output": {
            "true": {"ratelimit": {"input": {"key": "{{var.who}}", "rate": 1, "burst": 2}, "output": {
                "allow": term(r="allow", left="{{plugin.set.next.match.true.ratelimit.remaining}}"),
                "deny": term(r="deny")}}},
            "false": term(r="outside")}}}}}}
    root, _ = build(flow, clock=clock)

    def run(ip):
        ctx = RecCtx(kv=KV({"conn.ip": ip}))
        walk(root, ctx, 5)
        return ctx.result["r"]

    assert run("192.168.1.1") == "outside"
    assert [run("10.1.2.3") for _ in range(3)] == ["allow", "allow", "deny"]
    clock.now += 1.0
    assert run("10.1.2.3") == "allow"
    assert run("10.9.9.9") == "allow"  # its own bucket


@pytest.mark.parametrize("op,right,left,expected", [
    ("eq", "a", "a", True), ("ne", "a", "b", True), ("prefix", "/api", "/api/x", True),
    ("suffix", ".png", "/a.png", True), ("contains", "bot", "googlebot", True),
    ("regex", r"^/v\d+/", "/v2/x", True), ("regex", r"^/v\d+/", "/x", False),
    ("glob", "*.example.com", "a.example.com", True), ("glob", "*.example.com", "example.com", False),
    ("cidr", "10.0.0.0/8", "10.2.3.4", True), ("cidr", ["::1/128"], "::1", True), ("cidr", "10.0.0.0/8", "x", False),
    ("in", ["GET", "HEAD"], "GET", True), ("not_in", ["GET"], "POST", True),
    ("lt", 10, "9", True), ("gt", 10, "9", False), ("gt", 1, "abc", False),
    ("exists", True, "", True), ("exists", False, None, True), ("eq", "", None, False),
])
def test_match_ops(op, right, left, expected):
    flow = {"match": {"input": {"left": "{{k}}", "op": op, "right": right},
                      "output": {"true": term(r="t"), "false": term(r="f")}}}
    root, _ = build(flow)
    ctx = RecCtx(kv=KV({} if left is None else {"k": left}))
    walk(root, ctx, 5)
    assert ctx.result["r"] == ("t" if expected else "f")


def test_ratelimit_memory_bounded():
    flow = {"ratelimit": {"input": {"key": "{{k}}", "rate": 1, "max_keys": 100},
                          "output": {"allow": term(), "deny": term()}}}
    root, _ = build(flow)
    for i in range(1000):
        walk(root, RecCtx(kv=KV({"k": str(i)})), 5)
    assert len(root.impl.store.buckets) == 100
