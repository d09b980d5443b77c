"""The request as it goes upstream: hop-by-hop fields, Via, forwarding headers, trust."""

from types import SimpleNamespace

import pytest

from vane.net.http.message import Body, Headers, Request, Response
from vane.net.upstream.forward import strip_response, upstream_headers, upstream_request
from vane.net.upstream.options import Options, OptionsSource
from vane.plugins.builtin.forwarding import peer_ip


def ctx_for(headers, peer="203.0.113.7", version="1.1", scheme="http", authority="app.example"):
    hl = Headers([(k.encode(), v.encode()) for k, v in headers])
    req = Request("GET", "/p", "q=1", version, hl, Body.empty(), scheme, authority)
    return SimpleNamespace(request=req, conn=SimpleNamespace(peer=(peer, 5555), record=None))


def headers_for(ctx, o):
    return upstream_headers(ctx.request, peer_ip(ctx), o)


def names(headers):
    return [k.decode() for k, _ in headers.items_]


def opts(**extra):
    return Options({"upstream": "http://127.0.0.1:9000", **extra}, None, forwarded_default=True)


def test_hop_by_hop_and_connection_tokens_are_stripped():
    ctx = ctx_for([("host", "app.example"), ("connection", "keep-alive, X-Private"), ("keep-alive", "300"),
                   ("x-private", "secret"), ("te", "gzip"), ("upgrade", "h2c"), ("proxy-authorization", "x"),
                   ("transfer-encoding", "chunked"), ("accept", "*/*")])
    out = headers_for(ctx, opts(forwarded=False))
    assert names(out) == ["host", "accept", "via"]
    assert out.get("via") == "1.1 vane"


def test_te_trailers_is_the_one_te_passed_on():
    ctx = ctx_for([("host", "app.example"), ("connection", "te"), ("te", "gzip, trailers;q=1"), ("accept", "*/*")])
    out = headers_for(ctx, opts(forwarded=False))
    assert names(out) == ["host", "accept", "te", "via"]
    assert out.get("te") == "trailers"


def test_untrusted_forwarding_headers_are_replaced():
    ctx = ctx_for([("host", "app.example"), ("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=1.2.3.4"),
                   ("x-forwarded-proto", "https"), ("x-forwarded-host", "evil")])
    out = headers_for(ctx, opts())
    assert out.get_all("x-forwarded-for") == ["203.0.113.7"]
    assert out.get("x-forwarded-proto") == "http"
    assert out.get("x-forwarded-host") == "app.example"
    assert out.get_all("forwarded") == ['for=203.0.113.7;proto=http;host="app.example"']


def test_trusted_proxy_chains_are_extended():
    ctx = ctx_for([("host", "app.example"), ("x-forwarded-for", "198.51.100.1"), ("x-forwarded-proto", "https"),
                   ("forwarded", "for=198.51.100.1;proto=https")], peer="10.0.0.5")
    out = headers_for(ctx, opts(trusted_proxies=["10.0.0.0/8"]))
    assert out.get_all("x-forwarded-for") == ["198.51.100.1, 10.0.0.5"]
    assert out.get("x-forwarded-proto") == "https"
    assert out.get("forwarded") == 'for=198.51.100.1;proto=https, for=10.0.0.5;proto=http;host="app.example"'


def test_ipv6_and_mapped_peers():
    out = headers_for(ctx_for([("host", "h")], peer="2001:db8::1"), opts())
    assert out.get("forwarded").startswith('for="[2001:db8::1]";')
    out = headers_for(ctx_for([("host", "h")], peer="::ffff:192.0.2.1"), opts())
    assert out.get("x-forwarded-for") == "192.0.2.1"


def test_host_override_extra_headers_and_http2_client():
    ctx = ctx_for([("host", "app.example"), ("x-a", "client")])
    out = headers_for(ctx, opts(host="internal.svc", headers={"X-A": "set", "X-B": 2}, forwarded=False))
    assert out.get_all("host") == ["internal.svc"] and out.get_all("x-a") == ["set"] and out.get("x-b") == "2"
    h2 = ctx_for([("accept", "*/*")], version="2", scheme="https", authority="app.example:8443")
    out = headers_for(h2, opts(forwarded=False))
    assert out.get("host") == "app.example:8443" and out.get("via") == "2 vane"


def test_the_clients_upgrade_fields_are_never_forwarded():
    # a WebSocket upgrade goes upstream with the client codec's own "upgrade: websocket"
    ctx = ctx_for([("host", "h"), ("connection", "Upgrade"), ("upgrade", "websocket, h2c"),
                   ("sec-websocket-key", "k")])
    out = headers_for(ctx, opts(forwarded=False))
    assert names(out) == ["host", "sec-websocket-key", "via"]


def test_upstream_request_prefixes_base_and_sets_authority():
    ctx = ctx_for([("host", "app.example")])
    o = Options({"upstream": "https://10.0.0.1:8443/api"}, None)
    headers = headers_for(ctx, o)
    up = upstream_request(ctx.request, o, headers, h2=True)
    assert (up.path, up.query, up.scheme, up.authority) == ("/api/p", "q=1", "https", "app.example")
    plain = Options({"upstream": "http://10.0.0.1"}, None)
    assert upstream_request(ctx.request, plain, headers, h2=False) is ctx.request


def test_response_hop_by_hop_stripped():
    resp = Response(200, Headers([(b"connection", b"close, x-t"), (b"x-t", b"1"), (b"keep-alive", b"5"),
                                  (b"transfer-encoding", b"chunked"), (b"x-ok", b"1")]))
    strip_response(resp)
    assert resp.headers.items_ == [(b"x-ok", b"1")]
    resp = Response(101, Headers([(b"connection", b"upgrade"), (b"upgrade", b"websocket")]))
    strip_response(resp, keep_upgrade=True)
    assert resp.headers.items_ == [(b"upgrade", b"websocket")]


@pytest.mark.parametrize("args,message", [
    ({"upstream": "http://h", "timeout": 0}, "timeout"),
    ({"upstream": "http://h", "version": "h3"}, "version"),
    ({"upstream": "http://h", "headers": {"x": "a\r\nb"}}, "control"),
])
def test_bad_options(args, message):
    with pytest.raises(ValueError, match=message):
        Options(args, None)


def test_templated_options_are_cached_and_bounded():
    node = SimpleNamespace(input=SimpleNamespace(is_static=False, raw={"upstream": "{{var.u}}"}))
    src = OptionsSource(node, None)
    a = src.get({"upstream": "http://a:1"})
    assert src.get({"upstream": "http://a:1"}) is a
    for i in range(300):
        src.get({"upstream": f"http://h{i}:1"})
    assert len(src._cache) <= 256


def test_ca_file_resolves_against_config_dir():
    o = Options({"upstream": "https://h", "ca_file": "certs/ca.pem", "verify": "false"}, "/etc/vaned")
    assert o.spec.ca_file == "/etc/vaned/certs/ca.pem" and o.spec.verify is False
    assert "verify=off" in o.label


def test_http10_request_without_host_names_the_upstream():
    ctx = ctx_for([("accept", "*/*")], version="1.0", authority="")
    out = headers_for(ctx, opts(forwarded=False))
    assert out.get("host") == "127.0.0.1:9000" and out.get("via") == "1.0 vane"


def test_http2_requests_say_whether_a_forwarder_must_filter_them():
    """The HTTP/2 parser marks a request with ``te`` or a forwarding field (it refuses the other
    hop-by-hop ones): forged forwarding fields are still replaced, ``te: trailers`` still passed."""
    from vane.net.h2.request import request_head

    def h2(*fields):
        base = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/p"), (b":authority", b"app.example")]
        req, _ = request_head(base + [(k.encode(), v.encode()) for k, v in fields], "https", 100)
        return req

    plain = h2(("accept", "*/*"))
    assert plain.hop is False
    out = upstream_headers(plain, "203.0.113.7", opts())
    assert names(out) == ["accept", "host", "via", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
                          "forwarded"]
    for forged in ("x-forwarded-for", "forwarded", "x-forwarded-proto", "x-forwarded-host"):
        req = h2(("accept", "*/*"), (forged, "for=1.2.3.4"))
        assert req.hop is True
        out = upstream_headers(req, "203.0.113.7", opts())
        assert out.get_all("x-forwarded-for") == ["203.0.113.7"]
        assert out.get_all("forwarded") == ['for=203.0.113.7;proto=https;host="app.example"']
        assert out.get("x-forwarded-proto") == "https" and out.get("x-forwarded-host") == "app.example"
    req = h2(("te", "trailers"))
    assert req.hop is True
    out = upstream_headers(req, "203.0.113.7", opts(forwarded=False))
    assert names(out) == ["te", "host", "via"]
