"""Routing bypasses: spellings of a denied path or host that an origin would read as the same.

vaned normalises the target once (vane.net.http.target), routes on the result and forwards
the result, so every spelling either matches the deny rule, is refused with 400, or reaches
the origin as the normalised path — never as ``/admin`` past the rule.
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.support.h2raw import RawH2
from tests.support.net import exchange, free_port, wait_until


@pytest.fixture
def front(lab, nginx):
    port = free_port()
    rules = {
        "10-deny-path.json": {"rule": "no-admin", "listen": [f"127.0.0.1:{port}"], "priority": 10,
                              "match": {"req.path": {"prefix": "/admin"}},
                              "flow": {"deny": {"input": {"status": 403}}}},
        "11-deny-host.json": {"rule": "no-intranet", "listen": [f"127.0.0.1:{port}"], "priority": 10,
                              "match": {"req.host": "intranet.test"},
                              "flow": {"deny": {"input": {"status": 403}}}},
        "20-proxy.json": {"rule": "site", "listen": [f"127.0.0.1:{port}"],
                          "flow": {"proxy": {"input": {"upstream": nginx.url}}}},
    }
    d = lab.vaned(rules)
    d.wait_listening(port)
    return port, nginx, d


PATH_SPELLINGS = {
    "/admin": 403, "//admin": 403, "///admin": 403, "/./admin": 403, "/x/../admin": 403,
    "/x/%2e%2e/admin": 403, "/%2E%2E/admin": 403, "/%61dmin": 403, "/%61%64%6d%69%6e": 403,
    "/x/..//admin": 403, "/admin/.": 403, "/.//admin": 403,
    "/admin%2f": 400, "/x%2F..%2Fadmin": 400, "/x%5c..%5cadmin": 400, "/admin%00": 400,
    "/..;/admin": 400, "/x/.;/admin": 400, "/x/%zz": 400, "/x/%4": 400, "/a#/../admin": 400,
}


@pytest.mark.parametrize("path", sorted(PATH_SPELLINGS))
def test_path_spellings_of_a_denied_prefix(front, path):
    port, nginx, _ = front
    answers = exchange(port, f"GET {path} HTTP/1.1\r\nHost: site.test\r\n\r\n".encode(), 1.0)
    assert [r[0] for r in answers] == [PATH_SPELLINGS[path]], answers
    assert nginx.requests() == []


def test_absolute_form_targets_route_on_the_authority_that_is_forwarded(front):
    port, nginx, _ = front
    # RFC 9112 §3.2.2: the target's authority wins over Host, for routing and forwarding alike
    denied = exchange(port, b"GET http://intranet.test/ HTTP/1.1\r\nHost: site.test\r\n\r\n", 1.0)
    assert [r[0] for r in denied] == [403]
    served = exchange(port, b"GET http://site.test/page HTTP/1.1\r\nHost: intranet.test\r\n\r\n", 1.0)
    assert [r[0] for r in served] == [200]
    seen = wait_until(lambda: nginx.requests(), 3)
    assert seen == ["GET /page host=site.test upgrade=- len=-"], seen


@pytest.mark.parametrize("host", ["INTRANET.test", "intranet.test.", "Intranet.Test.:80"])
def test_host_spellings_of_a_denied_host(front, host):
    port, nginx, _ = front
    answers = exchange(port, f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(), 1.0)
    assert [r[0] for r in answers] == [403], (host, answers)
    assert nginx.requests() == []


@pytest.mark.parametrize("host", ["intranet.test, site.test", "site.test@intranet.test", "site.test/x",
                                  "site test", "intranet.test:8o", "[::1", "a:99999"])
def test_ambiguous_hosts_are_refused(front, host):
    port, nginx, _ = front
    answers = exchange(port, f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(), 1.0)
    assert [r[0] for r in answers] == [400], (host, answers)
    assert nginx.requests() == []


def test_http2_authority_and_path_spellings(front):
    port, nginx, _ = front
    client = RawH2(port)
    try:
        def status(path: bytes, authority: bytes = b"site.test", extra=None) -> int:
            return client.answer(client.get(path, authority, extra)).get("status")
        assert status(b"//admin") == 403
        assert status(b"/x/../admin") == 403
        assert status(b"/%61dmin") == 403
        assert status(b"/", b"INTRANET.test.") == 403
        assert status(b"/admin%2f") == 400
        assert status(b"/", b"site.test", [(b"host", b"intranet.test")]) == 400   # they disagree
        assert status(b"/ok") == 200
    finally:
        client.close()
    assert [line.split()[1] for line in wait_until(lambda: nginx.requests(), 3)] == ["/ok"]


def test_the_origin_gets_the_normalised_path_and_host(front):
    port, nginx, _ = front
    answers = exchange(port, b"GET //a/./b/../c/%7euser?q=%2e HTTP/1.1\r\nHost: Site.TEST.\r\n\r\n", 1.0)
    assert [r[0] for r in answers] == [200]
    assert answers[0][2] == b"origin /a/c/~user\n"
    assert wait_until(lambda: nginx.requests(), 3) == ["GET /a/c/~user?q=%2e host=site.test upgrade=- len=-"]


def test_a_connection_token_cannot_strip_host_or_the_forwarding_chain(lab, backend):
    port = free_port()
    d = lab.vaned({"r.json": {"rule": "p", "listen": [f"127.0.0.1:{port}"],
                              "flow": {"proxy": {"input": {"upstream": backend.url}}}}})
    d.wait_listening(port)
    r = httpx.get(f"http://127.0.0.1:{port}/headers",
                  headers={"Host": "site.test", "Connection": "host, x-forwarded-for, x-drop",
                           "X-Drop": "1", "X-Keep": "1"})
    seen = dict((k, v) for k, v in json.loads(r.text)["headers"])
    assert seen["host"] == "site.test"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert "x-drop" not in seen and seen["x-keep"] == "1"


def test_a_templated_rewrite_is_normalised_before_later_rules_and_the_origin(lab, nginx):
    port = free_port()
    d = lab.vaned({"r.json": {"rule": "p", "listen": [f"127.0.0.1:{port}"], "flow": {
        "rewrite": {"input": {"path": "/public/{{req.arg.f}}"}, "output": {"next": {
            "match": {"input": {"left": "{{req.path}}", "op": "prefix", "right": "/admin"}, "output": {
                "true": {"deny": {"input": {"status": 403}}},
                "false": {"proxy": {"input": {"upstream": nginx.url}}}}}}}}}}})
    d.wait_listening(port)
    assert [r[0] for r in exchange(port, b"GET /?f=../admin HTTP/1.1\r\nHost: a\r\n\r\n", 1.0)] == [403]
    assert [r[0] for r in exchange(port, b"GET /?f=%2e%2e/x HTTP/1.1\r\nHost: a\r\n\r\n", 1.0)] == [200]
    # req.arg.f decodes to "../x": the rewritten path normalises to /x before it goes anywhere
    assert [line.split()[1] for line in wait_until(lambda: nginx.requests(), 3)] == ["/x?f=%2e%2e/x"]


def test_static_directory_redirect_never_names_another_host(lab, tmp_path):
    port = free_port()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "index.html").write_text("hi")
    d = lab.vaned({"r.json": {"rule": "s", "listen": [f"127.0.0.1:{port}"], "flow": {
        "static": {"input": {"root": str(tmp_path)}, "output": {
            "success": {"respond": {}}, "*": {"deny": {"input": {"status": 404}}}}}}}})
    d.wait_listening(port)
    for path in ("//sub", "/sub", "///sub"):
        answers = exchange(port, f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode(), 1.0)
        assert [(r[0], r[1].get("location")) for r in answers] == [(301, "/sub/")], (path, answers)
