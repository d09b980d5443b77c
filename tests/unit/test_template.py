import pytest

from vane.engine.kv import KV
from vane.engine.template import CompiledInput, Limits, TemplateError, parse, render


def resolve(text, data, limits=Limits()):
    missing = []
    out = render(parse(text, limits), KV(data), limits.result_size, missing.append)
    return out, missing


def test_plain_and_embedded():
    assert resolve("{{conn.ip}}", {"conn.ip": "1.2.3.4"})[0] == "1.2.3.4"
    assert resolve("ip={{conn.ip}}:{{conn.port}}!", {"conn.ip": "1.2.3.4", "conn.port": "80"})[0] == "ip=1.2.3.4:80!"
    assert resolve("no template", {})[0] == "no template"


def test_nested_inside_out():
    data = {"conn.proto": "tcp", "kv.tcp_backend": "10.0.0.1:80"}
    assert resolve("{{kv.{{conn.proto}}_backend}}", data)[0] == "10.0.0.1:80"
    data2 = {"a": "b", "x.b": "c", "y.c": "deep"}
    assert resolve("{{y.{{x.{{a}}}}}}", data2)[0] == "deep"


def test_missing_key_is_empty_and_noted():
    out, missing = resolve("[{{nope}}]", {})
    assert out == "[]" and missing == ["nope"]


def test_brace_injection_refused():
    # a client controls conn.sni-like data: its value must never become a template
    out, missing = resolve("{{var.{{req.header.x}}}}", {"req.header.x": "}}{{secret", "secret": "s3cret"})
    assert out == "" and "s3cret" not in out
    assert missing == ["var.}}{{secret"]
    # values containing braces are returned verbatim, never re-parsed
    assert resolve("{{v}}", {"v": "{{secret}}", "secret": "x"})[0] == "{{secret}}"


def test_depth_limit():
    parse("{{a{{b{{c{{d{{e}}}}}}}}}}", Limits(depth=5))
    with pytest.raises(TemplateError, match="VANE_MAX_TEMPLATE_DEPTH"):
        parse("{{a{{b{{c{{d{{e{{f}}}}}}}}}}}}", Limits(depth=5))


def test_parse_nodes_limit():
    parse("{{a}}" * 50, Limits(parse_nodes=50))
    with pytest.raises(TemplateError, match="VANE_MAX_TEMPLATE_PARSE_NODES"):
        parse("{{a}}" * 51, Limits(parse_nodes=50))


def test_result_size_limit():
    limits = Limits(result_size=10)
    assert resolve("{{v}}", {"v": "x" * 10}, limits)[0] == "x" * 10
    with pytest.raises(TemplateError, match="VANE_MAX_TEMPLATE_RESULT_SIZE"):
        resolve("{{v}}{{v}}", {"v": "x" * 6}, limits)


def test_unclosed_and_empty_are_errors_but_stray_close_is_literal():
    with pytest.raises(TemplateError, match="unclosed"):
        parse("{{a")
    with pytest.raises(TemplateError, match="empty"):
        parse("{{ }}")
    assert resolve('{"a":{"b":1}}', {})[0] == '{"a":{"b":1}}'


def test_compiled_input_json_deep_and_static():
    ci = CompiledInput({"a": ["x{{k}}", {"b": "{{k}}"}], "n": 3})
    assert not ci.is_static
    assert ci.resolve(KV({"k": "v"})) == {"a": ["xv", {"b": "v"}], "n": 3}
    static = CompiledInput({"a": [1, "plain"]})
    assert static.is_static and static.resolve(KV()) is static.raw
    with pytest.raises(TemplateError) as info:
        CompiledInput({"a": ["ok", "{{bad"]})
    assert info.value.pointer == "/a/1"
