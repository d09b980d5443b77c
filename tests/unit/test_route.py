"""The route node the compiler lowers rules to: first match wins, host index, fallback."""

from tests.support.config import RESPOND, rule, write_config
from tests.support.fakeplugins import RecCtx
from vane.compile import compile_dir
from vane.config.settings import Settings
from vane.engine.kv import KV
from vane.engine.plugin import LinkEnv
from vane.plugins.builtin.route import Route


def route_node(tmp_path, rules):
    write_config(tmp_path, {"r.json": rules})
    graph = compile_dir(str(tmp_path), environ={})
    node = next(n for n in graph.nodes() if n.plugin == "route")
    node.impl = Route(node, LinkEnv(Settings()))
    return node


def pick(node, **kv):
    return node.impl.run(RecCtx("l7", KV({k.replace("_", "."): v for k, v in kv.items()})), None)[0]


def test_first_match_wins_in_rule_order(tmp_path):
    node = route_node(tmp_path, [
        rule("api", RESPOND, match={"req.host": "a.test", "req.path": {"prefix": "/api"}}),
        rule("site", RESPOND, match={"req.host": "a.test"}),
        rule("b", RESPOND, match={"req.host": ["b.test", "c.test"]}),
        rule("any-admin", RESPOND, match={"req.path": {"prefix": "/admin"}}),
    ])
    assert node.impl.index_key == "req.host"
    assert pick(node, req_host="a.test", req_path="/api/x") == "api"
    assert pick(node, req_host="a.test", req_path="/") == "site"
    assert pick(node, req_host="c.test", req_path="/") == "b"
    # an unindexed route still applies to every host, in its place in the order
    assert pick(node, req_host="a.test", req_path="/admin") == "site"
    assert pick(node, req_host="zzz", req_path="/admin") == "any-admin"
    assert pick(node, req_host="zzz", req_path="/") == "*"


def test_unpinned_route_keeps_its_priority_over_pinned_ones(tmp_path):
    node = route_node(tmp_path, [
        rule("first", RESPOND, match={"req.path": {"prefix": "/x"}}, priority=10),
        rule("h1", RESPOND, match={"req.host": "h1.test"}),
        rule("h2", RESPOND, match={"req.host": "h2.test"}),
    ])
    assert pick(node, req_host="h1.test", req_path="/x") == "first"
    assert pick(node, req_host="h1.test", req_path="/y") == "h1"


def test_many_hosts_use_the_index(tmp_path):
    node = route_node(tmp_path, [rule(f"r{i}", RESPOND, match={"req.host": f"h{i}.test"}) for i in range(500)])
    assert len(node.impl.index) == 500
    assert pick(node, req_host="h321.test") == "r321"
    assert pick(node, req_host="nope") == "*"
