"""What all the rules of one listener must agree on, at compile: ``accept_proxy_protocol``, and
whether a host is served with TLS; errors name the file, the pointer and both rules."""

import pytest

from tests.support.config import PROXY_L4, RESPOND, rule, write_config
from vane.compile import compile_dir
from vane.compile.listen import Trusted
from vane.config.errors import CompileFailed

PP = {"trusted": ["10.0.0.0/8", "192.0.2.1"]}


def errors_of(tmp_path, rules):
    write_config(tmp_path, rules)
    with pytest.raises(CompileFailed) as info:
        compile_dir(str(tmp_path), environ={})
    return [str(e) for e in info.value.errors]


def test_the_listeners_plan_carries_the_trusted_networks(tmp_path):
    write_config(tmp_path, {"10.json": [rule("a", RESPOND, listen="127.0.0.1:8080", accept_proxy_protocol=PP,
                                             match={"req.host": "a"}),
                                        rule("b", RESPOND, listen="127.0.0.1:8080", accept_proxy_protocol=PP)],
                            "20.json": rule("c", RESPOND, listen="127.0.0.1:8081")})
    graph = compile_dir(str(tmp_path), environ={})
    plans = {a.port: p for a, p in graph.listeners.items()}
    assert plans[8080].proxy_protocol == Trusted(["192.0.2.1/32", "10.0.0.0/8"])
    assert "10.1.2.3" in plans[8080].proxy_protocol and "192.0.2.1" in plans[8080].proxy_protocol
    assert "192.0.2.2" not in plans[8080].proxy_protocol and "::ffff:10.0.0.1" in plans[8080].proxy_protocol
    assert plans[8081].proxy_protocol is None


def test_rules_of_one_listener_must_agree(tmp_path):
    errs = errors_of(tmp_path, {"10-a.json": rule("a", RESPOND, listen="127.0.0.1:8080", accept_proxy_protocol=PP,
                                                  match={"req.host": "a"}),
                                "20-b.json": rule("b", RESPOND, listen="127.0.0.1:8080")})
    assert errs == ['rules/20-b.json: /accept_proxy_protocol: rules "a" (rules/10-a.json) and "b" (rules/20-b.json) '
                    "share listener tcp 127.0.0.1:8080 but not its accept_proxy_protocol: every rule of a listener "
                    "must have the same one"]


def test_different_networks_disagree_too(tmp_path):
    errs = errors_of(tmp_path, {"10.json": [
        rule("a", PROXY_L4, listen=":9000", accept_proxy_protocol={"trusted": ["10.0.0.0/8"]}, match={"conn.ip": "1.1.1.1"}),
        rule("b", PROXY_L4, listen=":9000", accept_proxy_protocol={"trusted": ["10.0.0.0/16"]})]})
    assert len(errs) == 1 and errs[0].startswith("rules/10.json: /1/accept_proxy_protocol: rules \"a\"")


def test_bad_networks_and_udp(tmp_path):
    errs = errors_of(tmp_path, {"10.json": rule("a", RESPOND, listen="127.0.0.1:8080",
                                                accept_proxy_protocol={"trusted": ["10.0.0.300/8"]})})
    assert errs[0].startswith("rules/10.json: /accept_proxy_protocol/trusted: not a network:")
    errs = errors_of(tmp_path, {"10.json": rule("a", PROXY_L4, listen="udp:127.0.0.1:5353",
                                                accept_proxy_protocol={"trusted": ["10.0.0.0/8"]})})
    assert errs == ["rules/10.json: /accept_proxy_protocol: the PROXY protocol is accepted on TCP listeners "
                    "only, not on udp 127.0.0.1:5353"]
    errs = errors_of(tmp_path, {"10.json": rule("a", RESPOND, listen="127.0.0.1:8080",
                                                accept_proxy_protocol={"trusted": []})})
    assert len(errs) == 1 and "/accept_proxy_protocol/trusted" in errs[0]


TLS = {"cert": "certs/a.pem", "key": "certs/a.key"}


def test_a_host_with_and_without_tls_on_one_listener_names_both_rules(tmp_path):
    errs = errors_of(tmp_path, {"10-a.json": rule("secure", RESPOND, listen=":443", tls=TLS,
                                                  match={"req.host": "api.example.com"}),
                                "20-b.json": rule("plain", RESPOND, listen=":443",
                                                  match={"req.host": ["www.example.com", "API.example.com"],
                                                         "req.path": {"prefix": "/v2"}})})
    assert any(e.startswith('rules/20-b.json: /tls: rules "secure" (rules/10-a.json) and "plain" (rules/20-b.json) '
                            'both take host "api.example.com" on listener tcp 0.0.0.0:443, but only "secure" '
                            'has "tls"') for e in errs), errs
    assert sum("/tls:" in e for e in errs) == 1     # one report, not one per listener family


def test_cleartext_and_tls_for_different_hosts_share_a_listener(tmp_path):
    write_config(tmp_path, {"10-a.json": rule("secure", RESPOND, listen="127.0.0.1:8443", tls=TLS,
                                              match={"req.host": "a.example"}),
                            "20-b.json": rule("plain", RESPOND, listen="127.0.0.1:8443",
                                              match={"req.host": "b.example"})})
    graph = compile_dir(str(tmp_path), environ={})
    assert [p.rules for p in graph.listeners.values()] == [["secure", "plain"]]
