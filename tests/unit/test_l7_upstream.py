"""Upstream addresses for fetch/proxy: parsed once, errors named."""

import pytest

from vane.net.upstream.url import UpstreamURLError, parse_upstream


@pytest.mark.parametrize("url,scheme,host,port,base,authority,name", [
    ("http://127.0.0.1:3000", "http", "127.0.0.1", 3000, "", "127.0.0.1:3000", "http://127.0.0.1:3000"),
    ("http://Backend.Example", "http", "backend.example", 80, "", "backend.example", "http://backend.example:80"),
    ("https://api.example:8443/v1/", "https", "api.example", 8443, "/v1", "api.example:8443",
     "https://api.example:8443/v1"),
    ("https://api.example", "https", "api.example", 443, "", "api.example", "https://api.example:443"),
    ("http://[::1]:8080/base", "http", "::1", 8080, "/base", "[::1]:8080", "http://[::1]:8080/base"),
])
def test_http_urls(url, scheme, host, port, base, authority, name):
    up = parse_upstream(url)
    assert (up.scheme, up.host, up.port, up.base, up.authority, up.name) == (scheme, host, port, base, authority,
                                                                            name)
    assert up.tls is (scheme == "https")


def test_unix_socket_with_and_without_base():
    up = parse_upstream("unix:/run/app.sock")
    assert (up.scheme, up.path, up.base, up.authority) == ("unix", "/run/app.sock", "", "localhost")
    up = parse_upstream("unix:/run/app.sock:/api")
    assert (up.path, up.base, up.name) == ("/run/app.sock", "/api", "unix:/run/app.sock:/api")


def test_target_prefixes_the_base():
    assert parse_upstream("http://h/api").target("/x") == "/api/x"
    assert parse_upstream("http://h").target("/x") == "/x"


@pytest.mark.parametrize("url,fragment", [
    ("", "empty"),
    ("ftp://h", "scheme"),
    ("http://", "no host"),
    ("http://h:0", "port 0"),
    ("http://h:99999", "out of range"),
    ("http://u:p@h", "credentials"),
    ("http://h/?a=1", "query"),
    ("http://h/#x", "fragment"),
    ("http://h/a/../b", "normalised"),
    ("unix:relative.sock", "absolute"),
    ("unix:/s.sock:api", "start with"),
    ("http://h/a b", "whitespace"),
])
def test_bad_urls_are_refused_with_a_reason(url, fragment):
    with pytest.raises(UpstreamURLError) as err:
        parse_upstream(url)
    assert fragment in str(err.value)
