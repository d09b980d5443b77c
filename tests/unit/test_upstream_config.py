"""Upstream groups in config: every mistake is a compile error naming the file and JSON pointer;
a group's digest follows its definition, not its spelling."""

from __future__ import annotations

import pytest

from tests.support.config import rule, write_config
from vane.compile import compile_dir, link_offline
from vane.config.errors import CompileFailed

URL_A, URL_B = "http://127.0.0.1:8001", "http://127.0.0.1:8002"


def proxy_to(upstream, **inputs) -> dict:
    return {"proxy": {"input": {"upstream": upstream, **inputs}}}


def compile_ok(tmp_path, rules, config=None):
    write_config(tmp_path, rules, config)
    graph = compile_dir(str(tmp_path), environ={})
    link_offline(graph)
    return graph


def errors_of(tmp_path, rules, config=None, link=False) -> list[str]:
    write_config(tmp_path, rules, config)
    with pytest.raises(CompileFailed) as info:
        graph = compile_dir(str(tmp_path), environ={})
        if link:
            link_offline(graph)
    return [str(e) for e in info.value.errors]


def groups(**defs) -> dict:
    return {"upstreams": defs}


@pytest.mark.parametrize("config,rules,expected", [
    (groups(api={"backends": [URL_A]}), {"10.json": rule("r", proxy_to("apx"))},
     'rules/10.json: /flow/proxy/input/upstream: unknown upstream group "apx": expected an upstream group '
     "(config.json upstreams: api)"),
    (groups(api={"backends": [URL_A], "balance": "weighted"}), {"10.json": rule("r", proxy_to("api"))},
     "config.json: /upstreams/api/balance: 'weighted' is not one of 'round_robin', 'least_conn', 'random', "
     "'hash'"),
    (groups(api={"backends": [URL_A, URL_B], "balance": "hash"}), {"10.json": rule("r", proxy_to("api"))},
     'config.json: /upstreams/api/balance: balance "hash" needs "hash_key", the request part to hash, e.g. '
     '"{{req.cookie.session}}" or "{{conn.ip}}"'),
    (groups(api={"backends": [URL_A, {"address": URL_B, "weight": 0}]}), {"10.json": rule("r", proxy_to("api"))},
     "config.json: /upstreams/api/backends/1/weight: 0 is less than the minimum of 1"),
    (groups(api={"backends": [URL_A, {"address": URL_B, "weight": 1000}]}),
     {"10.json": rule("r", proxy_to("api"))},
     "config.json: /upstreams/api/backends/1/weight: 1000 is greater than the maximum of 256"),
    (groups(api={"backends": [URL_A, "10.0.0.1:80"]}), {},
     "config.json: /upstreams/api/backends/1: a group's backends are all URLs (HTTP) or all host:port (TCP); "
     "this one differs from the first"),
    (groups(api={"backends": [URL_A, URL_A]}), {},
     "config.json: /upstreams/api/backends/1: duplicate backend 'http://127.0.0.1:8001' (also at "
     "/upstreams/api/backends/0)"),
    (groups(api={"backends": [{"address": URL_A, "backup": True}]}), {},
     "config.json: /upstreams/api/backends: every backend is a backup: at least one must be a primary"),
    (groups(api={"backends": [URL_A], "hash_key": "{{conn.ip}}"}), {},
     'config.json: /upstreams/api/hash_key: "hash_key" is used only with balance "hash"'),
    (groups(api={"backends": [URL_A], "balance": "hash", "hash_key": "session"}), {},
     "config.json: /upstreams/api/hash_key: hash_key must name what to hash with {{...}}, e.g. "
     "{{req.cookie.session}}: a constant sends everything to one backend"),
    (groups(api={"backends": [URL_A], "balance": "hash", "hash_key": "{{res.status}}"}), {},
     'config.json: /upstreams/api/hash_key: "res.status" does not exist before the upstream answers'),
    (groups(db={"backends": ["10.0.0.1:5432"], "health": {"path": "/"}}), {},
     'config.json: /upstreams/db/health/path: "path" is for HTTP checks: an L4 group is checked by TCP connect'),
    (groups(db={"backends": ["10.0.0.1:5432"], "passive": {"errors": ["5xx"]}}), {},
     'config.json: /upstreams/db/passive/errors: "5xx" is for HTTP groups'),
    (groups(db={"backends": ["10.0.0.1:5432", "db"]}), {},
     "config.json: /upstreams/db/backends/1: 'db': expected host:port"),
    (groups(db={"backends": ["10.0.0.1:99999"]}), {},
     "config.json: /upstreams/db/backends/0: '10.0.0.1:99999': expected host:port"),
    (groups(db={"backends": ["10.0.0.1:5432"]}), {"10.json": rule("r", proxy_to("db"))},
     'rules/10.json: /flow/proxy/input/upstream: upstream group "db" has host:port backends (TCP): an HTTP '
     '"upstream" needs URL backends'),
    (groups(api={"backends": [URL_A]}), {"10.json": rule("r", {"proxy": {"input": {"target": "api"}}})},
     'rules/10.json: /flow/proxy/input/target: upstream group "api" has URL backends (HTTP): an L4 "target" '
     "needs host:port backends"),
    (groups(api={"backends": [URL_A]}), {"10.json": rule("r", proxy_to("api", balance="least_conn"))},
     'rules/10.json: /flow/proxy/input/balance: "balance" does not apply to upstream group "api" '
     "(config.json /upstreams/api)"),
    ({}, {"10.json": rule("r", proxy_to(URL_A, hash_key="{{conn.ip}}"))},
     'rules/10.json: /flow/proxy/input/hash_key: "hash_key" does not apply to a single backend (use a list of '
     "backends or an upstream group)"),
    ({}, {"10.json": rule("r", proxy_to([URL_A, URL_B], balance="hash"))},
     'rules/10.json: /flow/proxy/input/balance: balance "hash" needs "hash_key", the request part to hash, e.g. '
     '"{{req.cookie.session}}" or "{{conn.ip}}"'),
    ({}, {"10.json": rule("r", proxy_to([URL_A, {"address": "10.0.0.1:80"}]))},
     "rules/10.json: /flow/proxy/input/upstream/1/address: '10.0.0.1:80': expected an http://, https:// or "
     "unix: URL"),
    ({}, {"10.json": rule("r", proxy_to("localhost:8000"))},
     "rules/10.json: /flow/proxy/input/upstream: 'localhost:8000': expected an http://, https:// or unix: URL, "
     "a template, or the name of an upstream group"),
    ({}, {"10.json": rule("r", {"proxy": {"input": {"target": ["{{var.a}}:80", "10.0.0.1:80"],
                                                     "health": {"interval": 1}}}})},
     "rules/10.json: /flow/proxy/input/health: health checks need backends known at compile time: a templated "
     "list has passive health only"),
    (groups(**{"bad/name": {"backends": [URL_A]}}), {}, "config.json: /upstreams: 'bad/name': a group name is letters, digits, '_', '.' and '-', up to 128"),
])
def test_bad_groups_name_file_and_pointer(tmp_path, config, rules, expected):
    errs = errors_of(tmp_path, rules or {"00.json": rule("x", {"respond": {}})}, config)
    assert expected in errs, errs


def test_a_backend_url_that_does_not_parse_is_reported_in_config_json(tmp_path):
    errs = errors_of(tmp_path, {"10.json": rule("r", proxy_to("api"))},
                     groups(api={"backends": [URL_A, "http://127.0.0.1:99999"]}), link=True)
    assert errs == ["config.json: /upstreams/api/backends/1: upstream 'http://127.0.0.1:99999': Port out of "
                    "range 0-65535"]


def test_too_many_backends_or_ring_points_are_refused(tmp_path):
    many = [f"http://10.0.{i // 250}.{i % 250 + 1}:80" for i in range(1001)]
    errs = errors_of(tmp_path, {}, groups(api={"backends": many}))
    assert any(e.startswith("config.json: /upstreams/api/backends: ") for e in errs), errs
    heavy = [{"address": f"http://10.0.0.{i}:80", "weight": 256} for i in range(1, 12)]
    errs = errors_of(tmp_path, {}, groups(api={"backends": heavy, "balance": "hash", "hash_key": "{{conn.ip}}"}))
    assert errs == ["config.json: /upstreams/api/backends: hashing over these backends takes 281600 ring points, "
                    "over the 262144 limit: lower their weights"]


def test_groups_inline_and_named_and_their_digests(tmp_path):
    config = groups(api={"backends": [URL_A, {"address": URL_B, "weight": 2}],
                         "health": {"path": "/healthz", "interval": 1}})
    graph = compile_ok(tmp_path, {"10.json": [
        rule("named", proxy_to("api"), listen="127.0.0.1:9001"),
        rule("inline", {"fetch": {"input": {"upstream": [URL_A, URL_B], "balance": "least_conn"},
                                  "output": {"success": {"respond": {}},
                                             "failure": proxy_to([URL_B, {"address": URL_A, "backup": True}])}}},
             listen="127.0.0.1:9002")]}, config)
    table = graph.upstreams
    assert sorted(table.groups) == ["api", "rule/inline", "rule/inline/2"]
    api = table.groups["api"]
    assert api.layer == "l7" and api.health["fall"] == 3 and api.health["path"] == "/healthz"
    assert api.passive == {"max_fails": 3, "fail_timeout": 10.0, "errors": ["connect", "timeout"]}
    assert table.groups["rule/inline"].balance == "least_conn"
    assert table.groups["rule/inline/2"].backends[1].backup
    assert sorted(table.by_node.values()) == ["api", "rule/inline", "rule/inline/2"]
    assert api.runtime is not None              # linked (offline: no registry, no checks)
    # the same group written with its defaults spelt out has the same digest
    spelt = groups(api={"backends": [{"address": URL_A, "weight": 1}, {"address": URL_B, "weight": 2}],
                        "balance": "round_robin", "passive": {"max_fails": 3},
                        "health": {"path": "/healthz", "interval": 1.0, "rise": 2}})
    same = compile_ok(tmp_path, {"10.json": rule("named", proxy_to("api"), listen="127.0.0.1:9001")}, spelt)
    assert same.upstreams.groups["api"].digest == api.digest
    changed = compile_ok(tmp_path, {"10.json": rule("named", proxy_to("api"), listen="127.0.0.1:9001")},
                         groups(api={"backends": [URL_A, URL_B]}))
    assert changed.upstreams.groups["api"].digest != api.digest


def test_l4_groups_default_to_hashing_the_client_address(tmp_path):
    graph = compile_ok(tmp_path, {"10.json": rule("tcp", {"proxy": {"input": {
        "target": ["127.0.0.1:7001", "127.0.0.1:7002"], "balance": "hash"}}}, listen="127.0.0.1:9003")})
    assert graph.upstreams.groups["rule/tcp"].hash_key == "{{conn.ip}}"


def test_unused_groups_and_templated_upstreams(tmp_path):
    graph = compile_ok(tmp_path, {"10.json": rule("r", proxy_to("{{req.header.x-pool}}"))},
                       groups(api={"backends": [URL_A]}, web={"backends": [URL_B]}))
    assert graph.upstreams.templated == {"l7"}
    assert graph.upstreams.named("web", "l7") is graph.upstreams.groups["web"]
    assert graph.upstreams.named("web", "l4") is None


def test_a_hash_key_from_client_data_never_reaches_the_options_cache(tmp_path):
    """The key is resolved per request by the plugin: the node's options stay compiled once,
    whatever the clients send (no cache entry, no re-parse per distinct key)."""
    graph = compile_ok(tmp_path, {"10.json": rule("r", proxy_to([URL_A, URL_B], balance="hash",
                                                                hash_key="{{req.cookie.session}}"))})
    node = next(n for n in graph.nodes() if n.plugin == "proxy")
    assert not node.input.is_static                 # the input holds a template...
    assert node.impl.resolve_input is False          # ...which the executor never resolves
    assert node.impl.static is not None and node.impl.source._cache == {}


def test_a_broken_group_is_reported_once_not_again_at_every_rule_naming_it(tmp_path):
    errs = errors_of(tmp_path, {"10.json": [rule("a", proxy_to("api")), rule("b", proxy_to("api"), listen=":81")]},
                     groups(api={"backends": [{"address": URL_A, "backup": True}]}))
    assert errs == ["config.json: /upstreams/api/backends: every backend is a backup: at least one must be a primary"]
