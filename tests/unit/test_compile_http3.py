"""The compiler and HTTP/3: ``tls.http3`` (or the config.json default) adds a UDP twin of each
TCP listener, whose tree is ``upgrade quic`` then the same rules; the TCP answers of those
rules carry Alt-Svc; an l4 UDP rule on such a port is an error with file and pointer."""

from __future__ import annotations

import pytest

from tests.support.config import PROXY_L4, RESPOND, rule, write_config
from vane.compile import ListenAddr, compile_dir
from vane.config.errors import CompileFailed

TLS = {"cert": "c.pem", "key": "k.pem"}


def graph(tmp_path, rules, config=None):
    write_config(tmp_path, rules, config)
    return compile_dir(str(tmp_path), environ={})


def plugins(node):
    return [n.plugin for n in node.walk()]


def test_http3_adds_a_udp_listener_with_upgrade_quic(tmp_path):
    g = graph(tmp_path, {"a.json": rule("a", RESPOND, listen="127.0.0.1:8443", tls={**TLS, "http3": True})})
    udp = g.listeners[ListenAddr("udp", "127.0.0.1", 8443)]
    assert udp.quic and udp.rules == ["a"]
    assert udp.root.plugin == "upgrade" and udp.root.input.raw["protocol"] == "quic"
    assert udp.root.next.input.raw == {"protocol": "http"}
    tcp = g.listeners[ListenAddr("tcp", "127.0.0.1", 8443)]
    assert not tcp.quic
    assert "headers" in plugins(tcp.root)          # the Alt-Svc header
    assert "headers" not in plugins(udp.root)


def test_without_http3_no_udp_listener_and_no_alt_svc(tmp_path):
    g = graph(tmp_path, {"a.json": rule("a", RESPOND, listen="127.0.0.1:8443", tls=TLS)})
    assert [a.transport for a in g.listeners] == ["tcp"]
    assert "headers" not in plugins(g.listeners[ListenAddr("tcp", "127.0.0.1", 8443)].root)


def test_config_default_and_rule_override(tmp_path):
    g = graph(tmp_path, {"a.json": rule("a", RESPOND, listen="127.0.0.1:8443", tls=TLS),
                         "b.json": rule("b", RESPOND, listen="127.0.0.1:9443", tls={**TLS, "http3": False})},
              config={"http3": True})
    assert ListenAddr("udp", "127.0.0.1", 8443) in g.listeners
    assert ListenAddr("udp", "127.0.0.1", 9443) not in g.listeners


@pytest.mark.parametrize("udp_listen", ["udp:127.0.0.1:8443", "udp::8443"])
def test_l4_udp_rule_on_the_http3_port_is_an_error(tmp_path, udp_listen):
    write_config(tmp_path, {"10-web.json": rule("web", RESPOND, listen="127.0.0.1:8443", tls={**TLS, "http3": True}),
                            "20-dns.json": rule("dns", PROXY_L4, listen=udp_listen)})
    with pytest.raises(CompileFailed) as info:
        compile_dir(str(tmp_path), environ={})
    [err] = [str(e) for e in info.value.errors]
    assert err.startswith("rules/10-web.json: /tls/http3: HTTP/3 needs udp 127.0.0.1:8443 for QUIC")
    assert '"dns"' in err


def test_http3_must_be_a_boolean(tmp_path):
    write_config(tmp_path, {"a.json": rule("a", RESPOND, listen="127.0.0.1:8443", tls={**TLS, "http3": "yes"})})
    with pytest.raises(CompileFailed) as info:
        compile_dir(str(tmp_path), environ={})
    assert any("/tls/http3" in str(e) for e in info.value.errors)


def test_alt_svc_names_each_listeners_own_port_without_a_template(tmp_path):
    """One rule on two ports: each TCP tree's Alt-Svc is a constant naming that tree's port."""
    g = graph(tmp_path, {"a.json": rule("a", RESPOND, listen=["127.0.0.1:8443", "127.0.0.1:9443"],
                                        tls={**TLS, "http3": True})})
    for port in (8443, 9443):
        tcp = g.listeners[ListenAddr("tcp", "127.0.0.1", port)]
        [node] = [n for n in tcp.root.walk() if n.plugin == "headers"]
        assert node.input.is_static
        assert node.input.raw == {"response": {"add": {"alt-svc": f'h3=":{port}"; ma=86400'}}}
