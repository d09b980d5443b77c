"""Path safety, validators, ranges, encodings and listings of the static file server."""

import os

import pytest

from vane.net import static_files as sf
from vane.net.http.message import FileBody, Headers


@pytest.mark.parametrize("path,expected", [
    ("/", []),
    ("/a/b.txt", ["a", "b.txt"]),
    ("//a/./b", ["a", "b"]),
    ("/a%20b", ["a b"]),
    ("/caf%C3%A9", ["café"]),
    ("/../etc/passwd", None),
    ("/a/%2e%2e/%2e%2e/etc", None),
    ("/a%2fb", None),
    ("/a%2Fb", None),
    ("/a%5cb", None),
    ("/a\\..\\b", None),
    ("/a%00b", None),
    ("/a\0b", None),
])
def test_split_url_path(path, expected):
    assert sf.split_url_path(path) == expected


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "f.txt").write_text("f")
    (tmp_path / "outside.txt").write_text("secret")
    os.symlink(tmp_path / "outside.txt", root / "escape")
    os.symlink(root / "sub" / "f.txt", root / "inner")
    return os.path.realpath(root)


def test_resolve_contains_and_symlinks(tree):
    assert sf.resolve(tree, ["sub", "f.txt"], False) == os.path.join(tree, "sub", "f.txt")
    assert sf.resolve(tree, [], False) == tree
    assert sf.resolve(tree, ["escape"], False) is None
    assert sf.resolve(tree, ["escape"], True) is None          # outside the root even when allowed
    assert sf.resolve(tree, ["inner"], False) is None
    assert sf.resolve(tree, ["inner"], True) == os.path.join(tree, "sub", "f.txt")
    assert sf.resolve(tree, ["missing"], False) == os.path.join(tree, "missing")


def test_etag_and_conditionals(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"12345")
    st = os.stat(p)
    tag = sf.etag(st)
    assert tag.startswith('W/"5-')
    assert sf.not_modified(Headers([(b"if-none-match", tag.encode())]), st, tag)
    assert sf.not_modified(Headers([(b"if-none-match", b'"other", ' + tag[2:].encode())]), st, tag)
    assert sf.not_modified(Headers([(b"if-none-match", b"*")]), st, tag)
    assert not sf.not_modified(Headers([(b"if-none-match", b'"nope"')]), st, tag)
    lm = sf.last_modified(st).encode()
    assert sf.not_modified(Headers([(b"if-modified-since", lm)]), st, tag)
    assert not sf.not_modified(Headers([(b"if-modified-since", b"Thu, 01 Jan 1970 00:00:00 GMT")]), st, tag)
    assert not sf.not_modified(Headers([(b"if-modified-since", b"garbage")]), st, tag)
    # If-None-Match wins over If-Modified-Since (RFC 9110 §13.2.2)
    assert not sf.not_modified(Headers([(b"if-none-match", b'"x"'), (b"if-modified-since", lm)]), st, tag)


@pytest.mark.parametrize("header,size,expected", [
    (None, 10, None),
    ("bytes=0-4", 10, (0, 4)),
    ("bytes=5-", 10, (5, 9)),
    ("bytes=-3", 10, (7, 9)),
    ("bytes=-30", 10, (0, 9)),
    ("bytes=8-100", 10, (8, 9)),
    ("bytes=10-", 10, "unsatisfiable"),
    ("bytes=-0", 10, "unsatisfiable"),
    ("bytes=0-0,2-3", 10, None),
    ("items=0-1", 10, None),
    ("bytes=5-2", 10, None),
    ("bytes=x-", 10, None),
    ("bytes=0-", 0, "unsatisfiable"),
])
def test_byte_range(header, size, expected):
    assert sf.byte_range(header, size) == expected


def test_if_range(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"1")
    st = os.stat(p)
    tag = sf.etag(st)
    assert sf.if_range_ok(Headers(), tag, st)
    assert not sf.if_range_ok(Headers([(b"if-range", tag.encode())]), tag, st)   # weak tags never match
    assert sf.if_range_ok(Headers([(b"if-range", sf.last_modified(st).encode())]), tag, st)


@pytest.mark.parametrize("header,coding,ok", [
    ("gzip, deflate, br", "br", True),
    ("gzip;q=0.5", "gzip", True),
    ("gzip;q=0", "gzip", False),
    ("*", "br", True),
    ("*;q=0, gzip", "br", False),
    ("identity", "gzip", False),
    (None, "gzip", False),
])
def test_accept_encoding(header, coding, ok):
    assert sf.accepts(header, coding) is ok


def test_content_types():
    assert sf.content_type("a.html") == "text/html; charset=utf-8"
    assert sf.content_type("a.js").endswith("javascript; charset=utf-8")
    assert sf.content_type("a.json") == "application/json; charset=utf-8"
    assert sf.content_type("a.png") == "image/png"
    assert sf.content_type("noext") == "application/octet-stream"


def test_listing_escapes_names(tmp_path):
    (tmp_path / "<script>alert(1)<\\script>").write_text("x")
    (tmp_path / "dir & co").mkdir()
    (tmp_path / ".hidden").write_text("x")
    page = sf.listing("/files/", str(tmp_path), False, str(tmp_path))
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert 'href="dir%20%26%20co/"' in page and ".hidden" not in page
    assert page.index("dir &amp; co/") < page.index("&lt;script&gt;")   # directories first


def test_file_body_streams_a_slice(tmp_path):
    p = tmp_path / "big"
    data = os.urandom(200_000)
    p.write_bytes(data)
    body = sf.file_body(str(p), 1000, 150_000)
    chunks = list(body)
    assert body.length == 150_000 and b"".join(chunks) == data[1000:151_000]
    assert max(len(c) for c in chunks) <= FileBody.CHUNK
