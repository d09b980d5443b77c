"""The compiler: validation errors with file and JSON pointer, lowering, hash."""

import json
import sys

import pytest

from tests.support.config import PROXY_L4, RESPOND, rule, write_config
from vane.compile import compile_dir, compile_path
from vane.config.errors import CompileFailed


def errors_of(tmp_path, rules, config=None, env=None):
    write_config(tmp_path, rules, config, env)
    with pytest.raises(CompileFailed) as info:
        compile_dir(str(tmp_path), environ={})
    return [str(e) for e in info.value.errors]


def one_error(tmp_path, rules, config=None, env=None):
    errs = errors_of(tmp_path, rules, config, env)
    assert len(errs) == 1, errs
    return errs[0]


def test_missing_branch_message_matches_contract(tmp_path):
    flow = {"match": {"input": {"left": "{{req.host}}", "op": "eq", "right": "x"},
                      "output": {"true": RESPOND}}}
    err = one_error(tmp_path, {"20-api.json": [rule("api", flow)]})
    assert err == 'rules/20-api.json: /0/flow/match/output: missing branch "false"'


def test_all_errors_of_all_files_at_once(tmp_path):
    errs = errors_of(tmp_path, {
        "10-a.json": [rule("a", {"nope": {}}), rule("b", {"respond": {"input": {"status": "x"}}})],
        "20-b.json": rule("c", RESPOND, listen=":0"),
    })
    assert any(e.startswith('rules/10-a.json: /0/flow/nope: unknown plugin "nope"') for e in errs)
    assert any(e.startswith("rules/10-a.json: /1/flow/respond/input/status") for e in errs)
    assert any(e.startswith("rules/20-b.json: /listen/0: ") and "port 0" in e for e in errs)


def test_duplicate_rule_names_name_both_files(tmp_path):
    err = one_error(tmp_path, {"10-a.json": rule("web", RESPOND), "20-b.json": rule("web", RESPOND, ":81")})
    assert err.startswith("rules/20-b.json: /rule: ") and "rules/10-a.json" in err and '"web"' in err


def test_plugin_at_wrong_layer(tmp_path):
    flow = {"detect": {"output": {"*": RESPOND}}}
    err = one_error(tmp_path, {"r.json": rule("r", flow, match={"req.host": "x"})})
    assert 'plugin "detect" does not run at layer l7' in err and "/flow/detect" in err


def test_unknown_branch_and_wildcard(tmp_path):
    flow = {"match": {"input": {"left": "a", "op": "eq", "right": "b"},
                      "output": {"true": RESPOND, "false": RESPOND, "maybe": RESPOND}}}
    err = one_error(tmp_path, {"r.json": rule("r", flow)})
    assert err == 'rules/r.json: /flow/match/output/maybe: unknown branch "maybe" (match has: true, false)'
    ok = {"match": {"input": {"left": "a", "op": "eq", "right": "b"}, "output": {"true": RESPOND, "*": RESPOND}}}
    write_config(tmp_path, {"r.json": rule("r", ok)})
    compile_dir(str(tmp_path), environ={})


def test_path_without_terminator(tmp_path):
    err = one_error(tmp_path, {"r.json": rule("r", {"set": {"input": {"var.a": "1"}}})})
    assert "/flow/set" in err and "without a terminator" in err


def test_terminator_with_output(tmp_path):
    err = one_error(tmp_path, {"r.json": rule("r", {"respond": {"output": {"next": RESPOND}}})})
    assert 'terminator "respond" takes no output' in err


def test_mixed_l4_and_l7_terminators(tmp_path):
    flow = {"match": {"input": {"left": "a", "op": "eq", "right": "b"}, "output": {"true": PROXY_L4, "false": RESPOND}}}
    err = one_error(tmp_path, {"r.json": rule("r", flow)})
    assert "mixes L4 and L7 terminators" in err and "/flow" in err


def test_req_predicate_on_l4_rule(tmp_path):
    err = one_error(tmp_path, {"r.json": rule("r", PROXY_L4, match={"req.path": "/"})})
    assert err.startswith("rules/r.json: /match/req.path: ") and "HTTP rule" in err


def test_tls_on_l4_rule(tmp_path):
    err = one_error(tmp_path, {"r.json": rule("r", PROXY_L4, tls={"cert": "c.pem", "key": "k.pem"})})
    assert err.startswith("rules/r.json: /tls: ")


@pytest.mark.parametrize("listen,needle", [
    (":0", "port 0 is not allowed"), ("localhost:80", "not an IP address"), ("8080", "expected [ip]:port"),
    ("::1:80", "brackets"), ("[::1]80", "expected [ipv6]:port"), (":99999", "out of range"), (":http", "not a number"),
])
def test_bad_listen(tmp_path, listen, needle):
    err = one_error(tmp_path, {"r.json": rule("r", RESPOND, listen=listen)})
    assert err.startswith("rules/r.json: /listen/0: ") and needle in err


def test_identical_predicates_on_one_listener(tmp_path):
    rules = [rule("a", RESPOND, match={"req.host": "x"}), rule("b", RESPOND, match={"req.host": "x"})]
    err = one_error(tmp_path, {"r.json": rules})
    assert 'rules "a"' in err and '"b"' in err and "identical predicates" in err and err.startswith("rules/r.json: /1/match")


def test_unreachable_after_catch_all(tmp_path):
    rules = [rule("all", RESPOND, priority=10), rule("api", RESPOND, match={"req.host": "api"})]
    err = one_error(tmp_path, {"r.json": rules})
    assert err.startswith("rules/r.json: /1: ") and "unreachable" in err and '"all"' in err


def test_l4_catch_all_shadows_http_rules(tmp_path):
    err = one_error(tmp_path, {"r.json": [rule("tcp", PROXY_L4), rule("web", RESPOND, match={"req.host": "x"})]})
    assert "unreachable" in err and '"web"' in err


def test_template_errors(tmp_path):
    errs = errors_of(tmp_path, {"r.json": [
        rule("a", {"respond": {"input": {"body": "{{unclosed"}}}),
        rule("b", {"respond": {"input": {"body": "{{a{{b{{c{{d{{e{{f}}}}}}}}}}}}"}}}, listen=":81"),
        rule("c", {"respond": {"input": {"body": "{{x}}" * 51}}}, listen=":82"),
    ]})
    assert any("/0/flow/respond/input/body: template: unclosed" in e for e in errs)
    assert any("/1/flow/respond/input/body" in e and "VANE_MAX_TEMPLATE_DEPTH" in e for e in errs)
    assert any("/2/flow/respond/input/body" in e and "VANE_MAX_TEMPLATE_PARSE_NODES" in e for e in errs)


def test_template_limits_follow_env(tmp_path):
    write_config(tmp_path, {"r.json": rule("a", {"respond": {"input": {"body": "{{a{{b}}}}"}}})},
                 env="VANE_MAX_TEMPLATE_DEPTH=1\n")
    with pytest.raises(CompileFailed, match="VANE_MAX_TEMPLATE_DEPTH"):
        compile_dir(str(tmp_path), environ={})


def test_scoped_key_that_cannot_exist(tmp_path):
    good = {"ratelimit": {"input": {"key": "k", "rate": 1}, "output": {
        "allow": {"respond": {"input": {"body": "{{plugin.ratelimit.remaining}}"}}}, "deny": RESPOND}}}
    write_config(tmp_path, {"r.json": rule("r", good)})
    compile_dir(str(tmp_path), environ={})
    bad = {"ratelimit": {"input": {"key": "k", "rate": 1}, "output": {
        "allow": {"respond": {"input": {"body": "{{plugin.ratelimit.allow.x.y}}"}}},
        "deny": {"respond": {"input": {"body": "{{plugin.ratelimit.nope}}"}}}}}}
    errs = errors_of(tmp_path, {"r.json": rule("r", bad)})
    assert len(errs) == 2
    assert all("no earlier node on this path" in e for e in errs)
    before = {"respond": {"input": {"body": "{{plugin.respond.x}}"}}}  # a node's own keys come after it
    assert "no earlier node" in one_error(tmp_path, {"r.json": rule("r", before)})


def test_req_keys_in_l4_templates(tmp_path):
    flow = {"proxy": {"input": {"target": "{{req.host}}:80"}}}
    assert "exists only in HTTP flows" in one_error(tmp_path, {"r.json": rule("r", flow)})


def test_output_keys_with_braces(tmp_path):
    flow = {"match": {"input": {"left": "a", "op": "eq", "right": "b"},
                      "output": {"true": RESPOND, "false": RESPOND, "{{x}}": RESPOND}}}
    assert "must not contain braces" in one_error(tmp_path, {"r.json": rule("r", flow)})
    flow = {"set": {"input": {"var.{{x}}": "1"}, "output": {"next": RESPOND}}}
    assert "/flow/set/input" in one_error(tmp_path, {"r.json": rule("r", flow)})


def test_bad_regex_and_cidr_in_predicates(tmp_path):
    errs = errors_of(tmp_path, {"r.json": [rule("a", RESPOND, match={"req.path": {"regex": "(["}}),
                                           rule("b", PROXY_L4, listen=":81", match={"conn.ip": {"cidr": "10.0.0.0/99"}})]})
    assert any(e.startswith("rules/r.json: /0/match/req.path/regex: invalid regex") for e in errs)
    assert any(e.startswith("rules/r.json: /1/match/conn.ip/cidr: invalid CIDR") for e in errs)


def test_invalid_json_and_schema(tmp_path):
    errs = errors_of(tmp_path, {"10.json": "{not json", "20.json": {"rule": "x", "listen": ":1"},
                                "30.json": rule("y", {"respond": {}, "deny": {}})})
    assert any(e.startswith("rules/10.json: /: invalid JSON at line 1") for e in errs)
    assert 'rules/20.json: /: missing "flow"' in errs
    assert any(e.startswith("rules/30.json: /flow: a node has exactly one key") for e in errs)


def test_config_json_errors(tmp_path):
    errs = errors_of(tmp_path, {"r.json": rule("r", RESPOND)}, config={"plugins": {
        "match": {"http": "http://127.0.0.1:1/", "branches": ["failure"]},
        "geo": {"http": "http://127.0.0.1:9000/geo", "branches": ["eu"]}}, "nope": 1})
    assert 'config.json: /: unknown key "nope"' in errs


def test_external_plugin_name_collision_and_failure_branch(tmp_path):
    errs = errors_of(tmp_path, {"r.json": rule("r", RESPOND)}, config={"plugins": {
        "match": {"http": "http://127.0.0.1:1/", "branches": ["failure"]},
        "geo": {"http": "http://127.0.0.1:9000/geo", "branches": ["eu"]}}})
    assert any("config.json: /plugins/match: " in e and "collides with a built-in" in e for e in errs)
    assert any("config.json: /plugins/geo/branches: " in e and '"failure"' in e for e in errs)


def test_external_plugin_usable_by_name(tmp_path):
    config = {"plugins": {"geo": {"http": "http://127.0.0.1:9000/geo", "branches": ["eu", "other", "failure"],
                                  "params": {"db": {"required": True}}}}}
    flow = {"geo": {"input": {"db": "x"}, "output": {"eu": RESPOND, "*": {"deny": {"input": {"status": 403}}}}}}
    write_config(tmp_path, {"r.json": rule("r", flow, match={"req.host": "x"})}, config=config)
    graph = compile_dir(str(tmp_path), environ={})
    assert any(n.plugin == "geo" and n.external for n in graph.nodes())
    flow_missing = {"geo": {"output": {"*": RESPOND}}}
    err = one_error(tmp_path, {"r.json": rule("r", flow_missing, match={"req.host": "x"})}, config=config)
    assert err == 'rules/r.json: /flow/geo/input: missing "db"'


def test_udp_rules_are_l4_only(tmp_path):
    assert "need TCP" in one_error(tmp_path, {"r.json": rule("r", RESPOND, listen="udp::53", match={"req.host": "x"})})


def test_listen_family_switches(tmp_path):
    write_config(tmp_path, {"r.json": rule("r", RESPOND)})
    graph = compile_dir(str(tmp_path), environ={"VANE_BIND_IPV6": "0"})
    assert [str(a) for a in graph.listeners] == ["tcp 0.0.0.0:8080"]
    err = one_error(tmp_path, {"r.json": rule("r", RESPOND, listen="[::1]:8080")}, env="VANE_BIND_IPV6=0\n")
    assert "VANE_BIND_IPV6=0" in err


def test_overlapping_specific_and_wildcard_listen(tmp_path):
    rules = [rule("a", RESPOND, listen="0.0.0.0:8080", match={"req.host": "a"}),
             rule("b", RESPOND, listen="127.0.0.1:8080", match={"req.host": "b"})]
    assert "overlaps" in one_error(tmp_path, {"r.json": rules})


# -- lowering, node by node ---------------------------------------------------------------------

def plugin_input(node):
    return node.plugin, node.input.raw


def test_lowered_tree_node_by_node(tmp_path):
    write_config(tmp_path, {
        "10-l4.json": [
            rule("ssh", {"proxy": {"input": {"target": "127.0.0.1:22"}}}, match={"peek.protocol": "ssh"}),
            rule("pass", {"proxy": {"input": {"target": "127.0.0.1:8443"}}}, match={"tls.sni": "pass.test"}, priority=1),
        ],
        "20-web.json": [
            rule("blog", RESPOND, match={"req.host": "blog.test", "req.path": {"prefix": "/"}}),
            rule("site", {"deny": {"input": {"status": 403}}}, match={"req.host": "site.test"},
                 tls={"cert": "certs/site.pem", "key": "certs/site.key"}),
        ],
    })
    graph = compile_dir(str(tmp_path), environ={})
    assert [str(a) for a in graph.listeners] == ["tcp 0.0.0.0:8080", "tcp [::]:8080"]
    v4, v6 = graph.listeners.values()
    assert v4.root is v6.root  # ":8080" is two sockets pointing to one tree
    assert v4.rules == ["pass", "ssh", "blog", "site"]
    assert v4.certs == [(str(tmp_path / "certs/site.pem"), str(tmp_path / "certs/site.key"))]
    # L4 rules first, by priority, in one route node
    n = v4.root
    assert n.plugin == "route" and n.synthetic and n.layer == "l4"
    assert n.input.raw == {"routes": [{"name": "pass", "match": {"tls.sni": "pass.test"}},
                                      {"name": "ssh", "match": {"peek.protocol": "ssh"}}]}
    assert n.branches["pass"].plugin == "proxy" and n.branches["pass"].rule == "pass"
    assert n.branches["ssh"].rule == "ssh"
    # then the HTTP group: detect tells TLS from cleartext
    detect = n.branches["*"]
    assert detect.plugin == "detect" and detect.synthetic and set(detect.branches) == {"tls", "*"}
    tls = detect.branches["tls"]
    assert tls.plugin == "upgrade" and tls.input.raw["protocol"] == "tls" and tls.input.raw["alpn"] == ["h2", "http/1.1"]
    http_tls = tls.next
    assert plugin_input(http_tls) == ("upgrade", {"protocol": "http"}) and http_tls.layer == "l4+"
    site = http_tls.next
    assert plugin_input(site) == ("route", {"routes": [{"name": "site", "match": {"req.host": "site.test"}}]})
    assert site.layer == "l7" and site.branches["site"].rule == "site"
    fallback = site.branches["*"]
    assert plugin_input(fallback) == ("match", {"left": "{{req.version}}", "op": "eq", "right": "2"})
    assert plugin_input(fallback.branches["true"]) == ("deny", {"status": 421})
    assert plugin_input(fallback.branches["false"]) == ("deny", {"status": 404})
    clear = detect.branches["*"]
    assert plugin_input(clear) == ("upgrade", {"protocol": "http"}) and clear.layer == "l4"
    blog = clear.next
    assert blog.plugin == "route" and blog.branches["blog"].rule == "blog"
    assert blog.branches["*"].branches["false"].input.raw == {"status": 404}


def test_only_l4_rules_end_in_reset(tmp_path):
    write_config(tmp_path, {"r.json": rule("ssh", PROXY_L4, match={"peek.protocol": "ssh"})})
    root = next(iter(compile_dir(str(tmp_path), environ={}).listeners.values())).root
    assert root.branches["*"].plugin == "deny" and root.branches["*"].input.raw == {}


def test_catch_all_rule_takes_the_wildcard(tmp_path):
    write_config(tmp_path, {"r.json": [rule("api", RESPOND, match={"req.host": "api"}), rule("rest", RESPOND)]})
    root = next(iter(compile_dir(str(tmp_path), environ={}).listeners.values())).root
    assert root.next.branches["*"].rule == "rest"


def test_rule_flow_keys_start_at_the_rule_root(tmp_path):
    # inserted nodes never appear in scoped-key paths
    flow = {"ratelimit": {"input": {"key": "k", "rate": 1}, "output": {"allow": RESPOND, "deny": RESPOND}}}
    write_config(tmp_path, {"r.json": rule("r", flow, match={"req.host": "x"})})
    graph = compile_dir(str(tmp_path), environ={})
    node = next(n for n in graph.nodes() if n.plugin == "ratelimit")
    assert node.scope == "plugin.ratelimit."


def test_order_priority_then_specificity_then_merge_order(tmp_path):
    write_config(tmp_path, {"a.json": [
        rule("one", RESPOND, match={"req.host": "a"}),
        rule("two", RESPOND, match={"req.host": "b", "req.path": "/"}),
        rule("three", RESPOND, match={"req.host": "c"}, priority=5),
        rule("four", RESPOND, match={"req.host": "d"}),
    ]})
    plan = next(iter(compile_dir(str(tmp_path), environ={}).listeners.values()))
    assert plan.rules == ["three", "two", "one", "four"]


def test_hash_stable_and_sensitive(tmp_path):
    write_config(tmp_path, {"r.json": rule("r", RESPOND)})
    h1 = compile_dir(str(tmp_path), environ={}).hash
    (tmp_path / "rules" / "r.json").write_text(json.dumps(rule("r", RESPOND), indent=4))  # same content
    assert compile_dir(str(tmp_path), environ={}).hash == h1
    write_config(tmp_path, {"r.json": rule("r", RESPOND, listen=":8081")})
    assert compile_dir(str(tmp_path), environ={}).hash != h1


def test_cert_file_change_changes_hash(tmp_path):
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "c.pem").write_text("one")
    (tmp_path / "certs" / "k.pem").write_text("key")
    write_config(tmp_path, {"r.json": rule("r", RESPOND, tls={"cert": "certs/c.pem", "key": "certs/k.pem"})})
    h1 = compile_dir(str(tmp_path), environ={}).hash
    (tmp_path / "certs" / "c.pem").write_text("two")
    assert compile_dir(str(tmp_path), environ={}).hash != h1


def test_graph_serialises_to_json_and_text(tmp_path):
    write_config(tmp_path, {"r.json": [rule(f"r{i}", RESPOND, match={"req.host": f"h{i}"}) for i in range(3)]})
    graph = compile_dir(str(tmp_path), environ={})
    data = json.loads(graph.dumps())
    assert data["hash"] == graph.hash
    tree = data["listeners"][0]["tree"]
    assert tree["upgrade"]["input"] == {"protocol": "http"}
    assert tree["upgrade"]["output"]["next"]["route"]["output"]["r0"] == RESPOND
    text = graph.render_text()
    assert "listener tcp 0.0.0.0:8080" in text and "[rule r0]" in text and "else: " in text


def test_compile_single_rule_file_with_config_plugins(tmp_path):
    config = {"plugins": {"geo": {"http": "http://127.0.0.1:9000/geo", "branches": ["eu", "failure"]}}}
    write_config(tmp_path / "etc", {}, config=config)
    flow = {"geo": {"output": {"eu": RESPOND, "failure": RESPOND}}}
    path = tmp_path / "new-rule.json"
    path.write_text(json.dumps(rule("g", flow, match={"req.host": "x"})))
    with pytest.raises(CompileFailed, match='unknown plugin "geo"'):
        compile_path(str(path))
    graph = compile_path(str(path), config_dir=str(tmp_path / "etc"))
    assert graph.listeners


def test_deep_chains_compile_and_serialise(tmp_path):
    rules = [rule(f"r{i}", RESPOND, match={"req.host": f"h{i}.test"}) for i in range(1000)]
    write_config(tmp_path, {"r.json": rules})
    graph = compile_dir(str(tmp_path), environ={})
    assert len(json.loads(graph.dumps(indent=None))["listeners"]) == 2
    assert graph.render_text().count("[rule r") == 1000


def test_proxy_protocol_v1_refused_on_udp(tmp_path):
    flow = {"detect": {"output": {"dns": {"proxy": {"input": {"target": "127.0.0.1:53", "proxy_protocol": "v1"}}},
                                  "*": {"deny": {}}}}}
    err = one_error(tmp_path, {"dns.json": [rule("other", RESPOND, listen=":8080"),
                                            rule("dns", flow, listen="udp:127.0.0.1:53")]})
    assert err == ('rules/dns.json: /1/flow/detect/output/dns/proxy/input/proxy_protocol: '
                   'PROXY protocol v1 is TCP only: on UDP listener udp 127.0.0.1:53 use "v2"')
    v2 = {"proxy": {"input": {"target": "127.0.0.1:53", "proxy_protocol": "v2"}}}
    write_config(tmp_path, {"dns.json": rule("dns", v2, listen="udp:127.0.0.1:53")})
    compile_dir(str(tmp_path), environ={})


def compile_calls(root, n: int) -> int:
    """Function calls (Python and C) made compiling ``n`` rules on three listeners, each rule
    with its own certificate: a measure of the work that does not depend on the machine."""
    rules = [rule(f"r{i}", {"headers": {"input": {"response": {"set": {"x": str(i)}}},
                                        "output": {"next": {"respond": {"input": {"body": "{{req.host}}"}}}}}},
                  listen=[":8080", "127.0.0.1:9090"], match={"req.host": f"h{i}.test", "req.path": {"prefix": f"/{i}"}},
                  tls={"cert": f"certs/{i}.pem", "key": f"certs/{i}.key"}) for i in range(n)]
    write_config(root, {"r.json": rules})
    count = 0

    def profile(frame, event, arg):
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    sys.setprofile(profile)
    try:
        compile_dir(str(root), environ={})
    finally:
        sys.setprofile(None)
    return count


def test_compile_work_grows_linearly_with_the_rules(tmp_path):
    """Four times the rules, about four times the work (a per-listener scan of the rules seen
    so far made it grow with the square)."""
    small = compile_calls(tmp_path / "small", 200)
    large = compile_calls(tmp_path / "large", 800)
    assert large / small < 4.5, (small, large)
