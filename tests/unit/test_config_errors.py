"""Hostile config files: every one ends in errors naming the file and the JSON pointer, never in
an exception, a hang or an unbounded read (loader, schemas, linker)."""

from __future__ import annotations

import gc
import json
import os
import socket

import greenlet
import pytest
import trustme
import wasmtime

from tests.support.config import RESPOND, rule, write_config
from vane.compile import compile_dir, link_offline
from vane.config.errors import CompileFailed
from vane.config.files import MAX_CERT_BYTES, FileRefused, read_regular
from vane.config.load import MAX_DEPTH, nested_deeper_than

pytestmark = pytest.mark.timeout(60)


def errors_of(root, link: bool = False) -> list[str]:
    """Every error of compiling (and, with ``link``, linking offline) ``root``."""
    with pytest.raises(CompileFailed) as info:
        graph = compile_dir(str(root), environ={})
        if link:
            link_offline(graph)
    return [str(e) for e in info.value.errors]


def one_error(root, link: bool = False) -> str:
    errs = errors_of(root, link)
    assert len(errs) == 1, errs
    return errs[0]


def deep_flow(levels: int, leaf: dict) -> dict:
    """A flow of ``levels`` nested match nodes (three JSON levels each) ending at ``leaf``."""
    node = leaf
    for _ in range(levels):
        node = {"match": {"input": {"left": "a", "op": "eq", "right": "b"},
                          "output": {"true": node, "false": RESPOND}}}
    return node


# -- JSON nesting ---------------------------------------------------------------------------------

def test_json_nested_a_thousand_levels_is_an_error_naming_the_file(tmp_path):
    write_config(tmp_path, {"deep.json": "[" * 1000 + "]" * 1000, "open.json": '{"rule": ' + "[" * 100_000},
                 config="{\"defaults\": " + "[" * 1000 + "]" * 1000 + "}")
    assert errors_of(tmp_path) == [
        f"{name}: /: nested too deeply: more than {MAX_DEPTH} levels of arrays and objects"
        for name in ("config.json", "rules/deep.json", "rules/open.json")]


def test_depth_counts_containers_not_brackets_inside_strings():
    assert not nested_deeper_than(json.dumps({"s": "[" * 5000, "t": "\\\"{{{{" * 100}), 3)
    assert not nested_deeper_than("[" * 256 + "]" * 256, 256)
    assert nested_deeper_than("[" * 257 + "]" * 257, 256)
    assert nested_deeper_than('{"a": ' * 300 + "1" + "}" * 300, 256)
    # unbalanced text is measured by how deep a parser would go before it fails
    assert nested_deeper_than("[" * 100_000, 256) and not nested_deeper_than("[" * 256, 256)
    assert nested_deeper_than("[[[}", 2) and not nested_deeper_than("[[[}", 3)
    assert nested_deeper_than("[" * 300 + '"never closed ]]]]', 256)
    assert not nested_deeper_than('"never closed ' + "[" * 300, 256)
    assert nested_deeper_than('{"a":[' * 129 + "]}" * 129, 256)  # kinds alternate: each level counts


def test_flow_at_the_depth_limit_compiles_links_and_renders(tmp_path):
    """The deepest accepted rule goes through every stage (schema, flows, hash, link, renderings)."""
    levels = (MAX_DEPTH - 2) // 3 - 1          # rule object + flow, then three levels per node
    rs = rule("deep", deep_flow(levels, RESPOND))
    text = json.dumps(rs)
    assert not nested_deeper_than(text, MAX_DEPTH) and nested_deeper_than(text, MAX_DEPTH - 6)
    write_config(tmp_path, {"deep.json": rs})
    graph = compile_dir(str(tmp_path), environ={})
    link_offline(graph)
    assert "respond" in graph.render_text()
    json.dumps(graph.to_json())


def test_schema_error_at_the_depth_limit_is_reported_not_a_recursion_error(tmp_path):
    levels = (MAX_DEPTH - 2) // 3 - 1
    write_config(tmp_path, {"deep.json": rule("deep", deep_flow(levels, {"respond": {"inpt": 1}}))})
    err = one_error(tmp_path)
    assert err.startswith("rules/deep.json: /flow/match/output/true/") and err.endswith('unknown key "inpt"')


def test_input_nested_to_the_limit_compiles_and_links(tmp_path):
    """An external plugin takes any input: templates nested to the limit are parsed and checked."""
    value = "{{req.host}}"
    for _ in range(MAX_DEPTH - 8):
        value = [value]
    flow = {"xp": {"input": {"deep": value}, "output": {"success": RESPOND, "failure": RESPOND}}}
    write_config(tmp_path, {"r.json": rule("r", flow)},
                 config={"plugins": {"xp": {"http": "http://127.0.0.1:9/x", "branches": ["success", "failure"]}}})
    graph = compile_dir(str(tmp_path), environ={})
    link_offline(graph)
    json.dumps(graph.to_json())


# -- numbers --------------------------------------------------------------------------------------

def test_integer_over_the_digit_limit_is_an_error_with_its_position(tmp_path):
    write_config(tmp_path, {"big.json": '{"rule": "r",\n "priority": ' + "9" * 5000 + "}"})
    assert one_error(tmp_path) == ("rules/big.json: /: invalid JSON at line 2 column 14: "
                                   "an integer literal longer than 4300 digits")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_json_numbers_are_refused(tmp_path, constant):
    write_config(tmp_path, {"n.json": json.dumps(rule("r", RESPOND, priority=0)).replace('"priority": 0',
                                                                                      f'"priority": {constant}')})
    assert one_error(tmp_path) == f"rules/n.json: /: invalid JSON: {constant} is not a JSON number"


# -- .env -----------------------------------------------------------------------------------------

def test_non_utf8_env_is_an_error_naming_env(tmp_path):
    write_config(tmp_path, {"r.json": rule("r", RESPOND)})
    (tmp_path / ".env").write_bytes(b"VANE_LOG_LEVEL=info\nNAME=caf\xe9\n")
    err = one_error(tmp_path)
    assert err.startswith(".env: /: not UTF-8: byte 0xe9 at line 2 column 9")


def test_env_that_is_not_a_regular_file_is_an_error(tmp_path):
    write_config(tmp_path, {"r.json": rule("r", RESPOND)})
    os.mkfifo(tmp_path / ".env")
    assert one_error(tmp_path) == ".env: /: not a regular file (a FIFO)"


def test_bad_setting_names_the_variable(tmp_path):
    write_config(tmp_path, {"r.json": rule("r", RESPOND)}, env="VANE_LOG_LEVEL=loud\n")
    err = one_error(tmp_path)
    assert err.startswith(".env: /: VANE_LOG_LEVEL: ") and "'loud'" in err


# -- rule files -----------------------------------------------------------------------------------

def test_rule_file_holding_null_is_an_error(tmp_path):
    write_config(tmp_path, {"10-null.json": "null", "20-ok.json": rule("ok", RESPOND)})
    assert one_error(tmp_path) == "rules/10-null.json: /: a rule file holds one rule object or a list of rules (found null)"


def test_config_json_holding_null_is_an_error(tmp_path):
    write_config(tmp_path, {"r.json": rule("r", RESPOND)}, config="null")
    assert one_error(tmp_path) == "config.json: /: must be of type object, got NoneType"


def test_odd_entries_named_json_in_rules_are_each_an_error(tmp_path):
    write_config(tmp_path, {"50-ok.json": rule("ok", RESPOND)})
    rules = tmp_path / "rules"
    (rules / "10-dir.json").mkdir()
    os.mkfifo(rules / "20-fifo.json")
    (rules / "30-dangling.json").symlink_to("nowhere.json")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(rules / "40-sock.json"))
        errs = errors_of(tmp_path)
    assert errs == [
        "rules/10-dir.json: /: not a regular file (a directory)",
        "rules/20-fifo.json: /: not a regular file (a FIFO)",
        "rules/30-dangling.json: /: dangling symbolic link (to 'nowhere.json')",
        "rules/40-sock.json: /: not a regular file (a socket)",
    ]


def test_rules_that_is_not_a_directory_is_an_error(tmp_path):
    tmp_path.joinpath("rules").write_text("[]")
    assert one_error(tmp_path) == "rules: /: cannot list the rules directory: Not a directory"


def test_read_regular_never_reads_past_the_limit(tmp_path):
    with pytest.raises(FileRefused, match="not a regular file \\(a character device\\)"):
        read_regular("/dev/zero", 10)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 11)
    with pytest.raises(FileRefused, match="file is 11 bytes, over the 10 limit"):
        read_regular(str(big), 10)
    assert read_regular(str(big), 11) == b"x" * 11


# -- certificates and keys ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cert_pair(tmp_path_factory):
    base = tmp_path_factory.mktemp("certs")
    leaf = trustme.CA().issue_cert("site.test")
    leaf.private_key_and_cert_chain_pem.write_to_path(str(base / "combined.pem"))
    leaf.cert_chain_pems[0].write_to_path(str(base / "site.pem"))
    leaf.private_key_pem.write_to_path(str(base / "site.key"))
    return base


def tls_rule(name, cert, key, host="site.test"):
    return rule(name, RESPOND, listen="127.0.0.1:8443", match={"req.host": host}, tls={"cert": cert, "key": key})


@pytest.mark.parametrize("field", ["cert", "key"])
def test_empty_cert_or_key_is_a_schema_error(tmp_path, field):
    tls = {"cert": "certs/site.pem", "key": "certs/site.key", field: ""}
    write_config(tmp_path, {"r.json": rule("r", RESPOND, tls=tls)})
    assert one_error(tmp_path) == f"rules/r.json: /tls/{field}: must not be empty"


def test_cert_naming_an_unbounded_file_is_refused_at_once(tmp_path, cert_pair):
    write_config(tmp_path, {"r.json": [tls_rule("a", "/dev/zero", str(cert_pair / "site.key"))]})
    graph = compile_dir(str(tmp_path), environ={})  # the digest for the hash does not read it
    assert graph.sources.file_digests["/dev/zero"] == "missing"
    with pytest.raises(CompileFailed) as info:
        link_offline(graph)
    assert [str(e) for e in info.value.errors] == [
        "rules/r.json: /0/tls/cert: /dev/zero: not a regular file (a character device)"]


def test_oversized_key_is_refused(tmp_path, cert_pair):
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "huge.key").write_bytes(b"A" * (MAX_CERT_BYTES + 1))
    write_config(tmp_path, {"r.json": tls_rule("a", str(cert_pair / "site.pem"), "certs/huge.key")})
    assert one_error(tmp_path, link=True) == (
        f"rules/r.json: /tls/key: certs/huge.key: file is {MAX_CERT_BYTES + 1} bytes, "
        f"over the {MAX_CERT_BYTES} limit")


def test_broken_cert_is_located_at_every_rule_naming_it(tmp_path, cert_pair):
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "bad.pem").write_text("not a certificate")
    key = str(cert_pair / "site.key")
    write_config(tmp_path, {"10-a.json": tls_rule("a", "certs/bad.pem", key, "a.test"),
                            "20-b.json": [tls_rule("b", "certs/bad.pem", key, "b.test")]})
    errs = errors_of(tmp_path, link=True)
    assert [e.split(": no PEM")[0] for e in errs] == ["rules/10-a.json: /tls/cert: certs/bad.pem",
                                                      "rules/20-b.json: /0/tls/cert: certs/bad.pem"]


def test_combined_pem_problem_points_at_tls(tmp_path):
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "both.pem").write_text("neither")
    write_config(tmp_path, {"r.json": tls_rule("a", "certs/both.pem", "certs/both.pem")})
    assert one_error(tmp_path, link=True).startswith("rules/r.json: /tls: certs/both.pem: ")


def test_good_certs_link(tmp_path, cert_pair):
    write_config(tmp_path, {"r.json": [tls_rule("a", str(cert_pair / "site.pem"), str(cert_pair / "site.key")),
                                       tls_rule("b", str(cert_pair / "combined.pem"), str(cert_pair / "combined.pem"),
                                                "b.test")]})
    link_offline(compile_dir(str(tmp_path), environ={}))


# -- link-time failures of plugins ----------------------------------------------------------------

def plugins_config(tmp_path):
    (tmp_path / "wasm").mkdir()
    (tmp_path / "wasm" / "garbage.wasm").write_bytes(b"\x00asm garbage, not a module")
    return {"plugins": {
        "auth": {"wasm": "wasm/garbage.wasm", "branches": ["success", "failure"]},
        "score": {"command": "/bin/true", "branches": ["success", "failure"]}}}


def ext_flow(name):
    return {name: {"output": {"success": RESPOND, "failure": RESPOND}}}


def test_every_link_failure_is_located_and_all_are_reported(tmp_path):
    script = tmp_path / "bin" / "run.sh"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    write_config(tmp_path, {
        "10-ext.json": [rule("a", ext_flow("auth"), match={"req.host": "a"}),
                        rule("b", ext_flow("auth"), match={"req.host": "b"}),
                        rule("c", ext_flow("score"), match={"req.host": "c"})],
        "20-cgi.json": rule("d", {"cgi": {"input": {"script": "bin/run.sh"}}}, match={"req.host": "d"}),
        "30-static.json": rule("e", {"static": {"input": {"root": "www", "index": "../x"},
                                                "output": {"*": RESPOND}}}, match={"req.host": "e"}),
    }, config=plugins_config(tmp_path))
    errs = errors_of(tmp_path, link=True)
    assert [e.split(": ", 2)[:2] for e in errs] == [
        ["config.json", "/plugins/auth/wasm"],
        ["config.json", "/plugins/score/command"],
        ["rules/20-cgi.json", "/flow/cgi"],
        ["rules/30-static.json", "/flow/static"],
    ], errs
    assert "is not under" in errs[1] and "not executable" in errs[2] and "bad index name" in errs[3]
    assert "<config>" not in "\n".join(errs)


def test_offline_link_binds_nothing_starts_no_greenlet_writes_nothing(tmp_path, cert_pair):
    """Every plugin kind is set up with no daemon: no socket, no greenlet, no WASM cache file."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "score").write_text("#!/bin/sh\necho '{\"branch\":\"success\"}'\n")
    (tmp_path / "bin" / "score").chmod(0o755)
    (tmp_path / "wasm").mkdir()
    (tmp_path / "wasm" / "p.wasm").write_bytes(wasmtime.wat2wasm(
        '(module (memory (export "memory") 1) (func (export "alloc") (param i32) (result i32) i32.const 0)'
        ' (func (export "handle") (param i32 i32) (result i64) i64.const 0))'))
    (tmp_path / "www").mkdir()
    state = tmp_path / "state"
    state.mkdir()
    config = {"plugins": {"score": {"command": "bin/score", "branches": ["success", "failure"]},
                          "mod": {"wasm": "wasm/p.wasm", "branches": ["success", "failure"]},
                          "geo": {"http": "http://127.0.0.1:9/geo", "branches": ["success", "failure"]},
                          "aud": {"unix": "/nonexistent/a.sock", "branches": ["success", "failure"]}}}
    chain = RESPOND
    for name in ("score", "mod", "geo", "aud"):
        chain = {name: {"output": {"success": chain, "failure": RESPOND}}}
    write_config(tmp_path, {
        "10-web.json": [
            tls_rule("tls", str(cert_pair / "site.pem"), str(cert_pair / "site.key")),
            rule("ext", chain, match={"req.host": "ext"}),
            rule("fetch", {"fetch": {"input": {"upstream": "http://127.0.0.1:9"},
                                     "output": {"success": {"respond": {}}, "failure": RESPOND}}},
                 match={"req.host": "f"}),
            rule("prox", {"proxy": {"input": {"upstream": "http://127.0.0.1:9"}}}, match={"req.host": "p"}),
            rule("rl", {"ratelimit": {"input": {"key": "{{conn.ip}}", "rate": 1, "burst": 1},
                                      "output": {"allow": RESPOND, "deny": RESPOND}}}, match={"req.host": "r"}),
            rule("files", {"static": {"input": {"root": "www"}, "output": {"*": RESPOND}}}, match={"req.host": "s"}),
            rule("app", {"cgi": {"input": {"script": "bin/score"}}}, match={"req.host": "c"}),
            rule("moved", {"set": {"input": {"var.to": "/new"}, "output": {"next": {"rewrite": {
                "input": {"path": "{{var.to}}"}, "output": {"next": {"redirect": {
                    "input": {"location": "https://x.test{{req.path}}"}}}}}}}}}, match={"req.host": "m"}),
        ],
        "20-l4.json": rule("l4", {"proxy": {"input": {"target": "127.0.0.1:9"}}}, listen="127.0.0.1:9000"),
    }, config=config, env=f"VANE_STATE_DIR={state}\n")

    def sockets() -> int:
        return sum(os.readlink(f"/proc/self/fd/{fd}").startswith("socket:") for fd in os.listdir("/proc/self/fd")
                   if os.path.exists(f"/proc/self/fd/{fd}"))

    def greenlets() -> int:
        return sum(isinstance(o, greenlet.greenlet) and bool(o) for o in gc.get_objects())

    graph = compile_dir(str(tmp_path), environ={})
    before = (sockets(), greenlets())
    link_offline(graph)
    assert all(node.impl is not None for node in graph.nodes())
    assert (sockets(), greenlets()) == before
    assert list(state.rglob("*")) == []


def test_rules_directory_that_cannot_be_listed_is_an_error(tmp_path):
    from mock import patch

    write_config(tmp_path, {"r.json": rule("r", RESPOND)})
    denied = PermissionError(13, "Permission denied", str(tmp_path / "rules"))
    with patch("vane.config.load.os.listdir", side_effect=denied):
        assert one_error(tmp_path) == "rules: /: cannot list the rules directory: Permission denied"


def test_message_quoting_a_huge_value_is_cut(tmp_path):
    write_config(tmp_path, {"r.json": rule("r", RESPOND, match={"req.host": [{"x": 1}] + ["a" * 50] * 20_000})})
    err = one_error(tmp_path)
    assert err.startswith("rules/r.json: /match/req.host: invalid value [{'x': 1}, 'aaaa") and err.endswith("...")
    assert len(err) < 200
