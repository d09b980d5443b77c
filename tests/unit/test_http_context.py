"""The L7 context's lazy keys and the small HTTP plugins, walked without sockets."""

import pytest

from vane.compile.flows import FlowBuilder
from vane.config.errors import ConfigError
from vane.config.settings import Settings
from vane.engine.context import Context
from vane.engine.executor import walk
from vane.engine.kv import KV
from vane.engine.outcome import FINISHED, Rejected
from vane.engine.plugin import LinkEnv
from vane.engine.template import Limits
from vane.flow.l7context import L7Context
from vane.net.http.message import Body, Headers, Request
from vane.plugins.registry import builtin_registry


class Conn(Context):
    """Stands in for the L4 context a request arrives on and for its connection."""

    __slots__ = ("peer", "local", "listener", "conn", "upstream")

    def __init__(self):
        super().__init__("l4", KV({"conn.ip": "192.0.2.7", "tls.sni": "a.test"}), "c-1")
        self.peer = ("192.0.2.7", 5000)
        self.local = ("127.0.0.1", 80)
        self.listener = "tcp 127.0.0.1:80"
        self.conn = self
        self.upstream = None


def request(path="/p", query="", headers=(), body=b"", method="GET"):
    hl = Headers([(k.encode(), v.encode()) for k, v in [("host", "Example.test:8080"), *headers]])
    return Request(method, path, query, "1.1", hl, Body.from_bytes(body), authority="example.test:8080")


def run(flow, req, settings=Settings()):
    errors: list[ConfigError] = []
    root = FlowBuilder(builtin_registry(), Limits(), "rules/t.json", "t", errors).build(flow, "/flow", "l7")
    assert not errors, [str(e) for e in errors]
    env = LinkEnv(settings)
    for node in root.walk():
        node.impl = node.spec.load()(node, env)
    ctx = L7Context(Conn(), req, None, settings)
    outcome = walk(root, ctx, 5)
    return ctx, outcome


def body_of(ctx):
    return b"".join(ctx.final_response().body)


def test_lazy_request_keys():
    req = request("/a/b", "x=1&y=2&x=3", [("cookie", "sid=abc; theme=dark"), ("x-one", "1"), ("x-one", "2")])
    text = ("{{req.method}} {{req.host}} {{req.path}} {{req.query}} {{req.uri}} {{req.version}} "
            "{{req.arg.x}} {{req.cookie.theme}} {{req.header.x-one}} {{conn.ip}} {{tls.sni}} {{conn.layer}}")
    ctx, outcome = run({"respond": {"input": {"body": text}}}, req)
    assert outcome is FINISHED
    assert body_of(ctx) == b"GET example.test /a/b x=1&y=2&x=3 /a/b?x=1&y=2&x=3 1.1 1 dark 1, 2 192.0.2.7 a.test l7"


def test_req_body_and_413():
    ctx, _ = run({"respond": {"input": {"body": "got {{req.body}}"}}}, request(body=b"hello", method="POST"))
    assert body_of(ctx) == b"got hello"
    ctx, outcome = run({"respond": {"input": {"body": "{{req.body}}"}}}, request(body=b"x" * 100, method="POST"),
                       Settings(max_body_size=10))
    assert isinstance(outcome, Rejected) and outcome.status == 413   # the client's fault: no ERROR


def test_too_many_query_fields_or_cookies_are_refused_not_truncated():
    many = "&".join(f"a{i}=1" for i in range(300)) + "&debug=1"
    ctx, outcome = run({"respond": {"input": {"body": "{{req.arg.debug}}"}}}, request("/", many))
    assert isinstance(outcome, Rejected) and outcome.status == 400
    cookie = "; ".join(f"c{i}=1" for i in range(300)) + "; role=admin"
    ctx, outcome = run({"respond": {"input": {"body": "{{req.cookie.role}}"}}},
                       request(headers=[("cookie", cookie)]))
    assert isinstance(outcome, Rejected) and outcome.status == 400


def test_respond_status_headers_base64():
    ctx, _ = run({"respond": {"input": {"status": 201, "headers": {"x-a": "b"}, "body_base64": "aGk="}}}, request())
    resp = ctx.final_response()
    assert resp.status == 201 and resp.headers.get("x-a") == "b" and body_of(ctx) == b"hi"


def test_redirect_templated():
    ctx, _ = run({"redirect": {"input": {"location": "https://{{req.host}}{{req.uri}}", "status": 308}}},
                 request("/x", "q=1"))
    resp = ctx.final_response()
    assert resp.status == 308 and resp.headers.get("location") == "https://example.test/x?q=1"


def test_deny_l7():
    ctx, _ = run({"deny": {"input": {"status": 403, "body": "no"}}}, request())
    assert ctx.final_response().status == 403 and body_of(ctx) == b"no"


def test_headers_and_rewrite_then_respond():
    flow = {"headers": {"input": {"request": {"set": {"x-req": "1"}, "remove": ["cookie"]},
                                  "response": {"set": {"x-res": "{{req.path}}"}}},
                        "output": {"next": {"rewrite": {"input": {"path": "/new{{req.path}}", "query": "a=b"},
                                                        "output": {"next": {"respond": {"input": {
                                                            "body": "{{req.uri}} {{req.header.x-req}}"}}}}}}}}}
    req = request("/old", headers=[("cookie", "a=1")])
    ctx, _ = run(flow, req)
    assert body_of(ctx) == b"/new/old?a=b 1"
    assert ctx.final_response().headers.get("x-res") == "/old"
    assert req.headers.get("cookie") is None


def test_header_injection_refused():
    flow = {"headers": {"input": {"response": {"set": {"x": "{{req.arg.v}}"}}}, "output": {
        "next": {"respond": {"input": {"body": "ok"}}}}}}
    ctx, _ = run(flow, request(query="v=a%0d%0aSet-Cookie:%20x"))
    with pytest.raises(ValueError):
        ctx.final_response()
