"""ACME in the compiler (offline): names from ``req.host``, config.json ``acme``, the lowering
that answers HTTP-01 before any rule; and the schedule (backoff, renewal point)."""

import pytest

from tests.support.config import RESPOND, rule, write_config
from vane.acme.manager import RETRY_FIRST, RETRY_MAX, renewal_time, retry_delay
from vane.acme.plan import DIRECTORIES
from vane.compile import compile_dir, compile_path, link_offline
from vane.config.errors import CompileFailed


def acme_rule(name="site", host="www.example.com", **extra):
    match = {"req.host": host} if host is not None else {}
    return rule(name, RESPOND, listen="127.0.0.1:8443", match=match, tls={"acme": True}, **extra)


def errors_of(tmp_path, rules, config=None):
    write_config(tmp_path, rules, config)
    with pytest.raises(CompileFailed) as info:
        compile_dir(str(tmp_path), environ={})
    return [str(e) for e in info.value.errors]


def test_names_and_defaults(tmp_path):
    write_config(tmp_path, {"a.json": acme_rule(host=["www.example.com", "Example.COM."]),
                            "b.json": acme_rule("other", host={"eq": "api.example.com"})})
    graph = compile_dir(str(tmp_path), environ={})
    assert graph.acme.name_sets == [("www.example.com", "example.com"), ("api.example.com",)]
    s = graph.acme.settings
    assert s.directory == DIRECTORIES["production"] and s.challenges == ("http-01", "tls-alpn-01")
    assert s.renew_before_days is None and s.eab is None
    tls = next(n for n in graph.nodes() if n.plugin == "upgrade" and n.input.raw["protocol"] == "tls")
    assert tls.input.raw["certs"] == [{"acme": ["www.example.com", "example.com"]}, {"acme": ["api.example.com"]}]
    link_offline(graph)  # `vane compile` links with throwaway fallbacks, writing nothing


def test_staging_shortcut_and_ca_bundle_resolve(tmp_path):
    write_config(tmp_path, {"a.json": acme_rule()},
                 {"acme": {"directory": "staging", "ca_bundle": "certs/ca.pem", "email": "ops@example.com",
                           "challenges": ["tls-alpn-01"], "renew_before_days": 20,
                           "eab": {"kid": "k1", "hmac_key": "c2VjcmV0"}}})
    s = compile_dir(str(tmp_path), environ={}).acme.settings
    assert s.directory == DIRECTORIES["staging"] and s.ca_bundle == str(tmp_path / "certs" / "ca.pem")
    assert s.challenges == ("tls-alpn-01",) and s.renew_before_days == 20 and s.eab == ("k1", "c2VjcmV0")


@pytest.mark.parametrize("host, where, text", [
    ("*.example.com", "/match/req.host", "wildcard"),
    ({"regex": "^.*$"}, "/match/req.host", "exact host names"),
    ({"suffix": ".example.com"}, "/match/req.host", "exact host names"),
    (["a.example.com", "*.b.example.com"], "/match/req.host/1", "wildcard"),
    ("10.0.0.1", "/match/req.host", "not a host name"),
    ("localhost", "/match/req.host", "not a host name"),
    (None, "/tls/acme", '"req.host" predicate'),
])
def test_hosts_an_acme_certificate_cannot_carry(tmp_path, host, where, text):
    errs = errors_of(tmp_path, {"a.json": acme_rule(host=host)})
    assert len(errs) == 1 and errs[0].startswith(f"rules/a.json: {where}: ") and text in errs[0], errs


def test_files_and_acme_at_once_is_an_error(tmp_path):
    r = acme_rule()
    r["tls"] = {"acme": True, "cert": "c.pem", "key": "k.pem"}
    errs = errors_of(tmp_path, {"a.json": r})
    assert errs == ['rules/a.json: /tls: "tls" takes either "cert" and "key" or "acme", not both']


@pytest.mark.parametrize("acme, where", [
    ({"directory": "http://ca.example/dir"}, "/acme/directory"),
    ({"challenges": ["dns-01"]}, "/acme/challenges/0"),
    ({"challenges": []}, "/acme/challenges"),
    ({"renew_before_days": 0}, "/acme/renew_before_days"),
    ({"eab": {"kid": "k"}}, "/acme/eab"),
    ({"email": "nobody"}, "/acme/email"),
    ({"unknown": 1}, "/acme"),
])
def test_config_json_acme_is_schema_checked(tmp_path, acme, where):
    errs = errors_of(tmp_path, {"a.json": acme_rule()}, {"acme": acme})
    assert any(e.startswith(f"config.json: {where}: ") for e in errs), errs


def test_tls_acme_false_is_refused(tmp_path):
    r = acme_rule()
    r["tls"] = {"acme": False}
    assert any(e.startswith("rules/a.json: /tls/acme") for e in errors_of(tmp_path, {"a.json": r}))


def test_http01_is_answered_before_the_rules_of_cleartext_listeners(tmp_path):
    plain = rule("plain", RESPOND, listen="127.0.0.1:8080")
    write_config(tmp_path, {"a.json": acme_rule(), "p.json": plain})
    graph = compile_dir(str(tmp_path), environ={})
    clear = next(p for a, p in graph.listeners.items() if a.port == 8080)
    up = clear.root
    assert up.plugin == "upgrade" and up.next.plugin == "route"
    assert up.next.branches["acme-challenge"].plugin == "acme_challenge"
    assert up.next.input.raw["routes"][0]["match"] == {"req.path": {"prefix": "/.well-known/acme-challenge/"}}
    # without HTTP-01 there is nothing in front of the rules
    write_config(tmp_path, {"a.json": acme_rule(), "p.json": plain}, {"acme": {"challenges": ["tls-alpn-01"]}})
    graph = compile_dir(str(tmp_path), environ={})
    clear = next(p for a, p in graph.listeners.items() if a.port == 8080)
    assert all(n.plugin != "acme_challenge" for n in clear.root.walk())


def test_no_acme_no_challenge_node(tmp_path):
    write_config(tmp_path, {"p.json": rule("plain", RESPOND, listen="127.0.0.1:8080")})
    graph = compile_path(str(tmp_path))
    assert graph.acme is None and all(n.plugin != "acme_challenge" for n in graph.nodes())


def test_retry_delay_doubles_up_to_a_cap_and_honours_retry_after():
    assert retry_delay(1) == RETRY_FIRST and retry_delay(2) == 2 * RETRY_FIRST and retry_delay(3) == 4 * RETRY_FIRST
    assert retry_delay(50) == RETRY_MAX
    assert retry_delay(1, retry_after=3600) == 3600 and retry_delay(3, retry_after=1) == 4 * RETRY_FIRST


def test_renewal_time():
    day = 86400.0
    assert renewal_time(0, 90 * day, None) == 60 * day             # a third of the lifetime left
    assert renewal_time(0, 90 * day, 10) == 80 * day
    assert renewal_time(0, 6 * day, 30) == 3 * day                 # never before half the lifetime


def test_http01_port_gets_a_listener_of_its_own_when_no_rule_listens_there(tmp_path):
    write_config(tmp_path, {"a.json": acme_rule()}, {"acme": {"http_port": 8080}})
    graph = compile_dir(str(tmp_path), environ={"VANE_BIND_IPV6": "0"})
    own = [p for a, p in graph.listeners.items() if a.port == 8080]
    assert own and all(p.rules == [] for p in own)
    route = own[0].root.next
    assert route.branches["acme-challenge"].plugin == "acme_challenge"
    assert route.default.plugin == "redirect" and route.default.input.raw["status"] == 308
    # a rule of the operator's on that port: its listener, with the answers before its rules
    write_config(tmp_path, {"a.json": acme_rule(), "p.json": rule("plain", RESPOND, listen=":8080")},
                 {"acme": {"http_port": 8080}})
    graph = compile_dir(str(tmp_path), environ={})
    assert all(p.rules == ["plain"] for a, p in graph.listeners.items() if a.port == 8080)
