"""``vane get connections`` while connections are open: HTTP/1.1 keep-alive and HTTP/2 alike
show their rule, requests and the bytes they moved so far."""

from __future__ import annotations

import pytest

from tests.support.config import rule
from tests.support.h2raw import RawH2
from tests.support.net import connect, free_ports

pytestmark = pytest.mark.timeout(60)


def test_http1_and_http2_connections_show_rule_requests_and_bytes(lab):
    (port,) = free_ports(1)
    d = lab.vaned({"r.json": rule("site", {"respond": {"input": {"body": "x" * 1000}}},
                                  listen=f"127.0.0.1:{port}")})
    d.wait_listening(port)
    h1 = connect(port)
    h2 = RawH2(port)
    try:
        for _ in range(2):
            h1.sendall(b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n")
            got = b""
            while got.count(b"x") < 1000:
                got += h1.recv(65536)
            sid = h2.get(b"/", b"site.test")
            assert h2.answer(sid)["status"] == 200
        rows = {row["remote"].rsplit(":", 1)[1]: row for row in d.cli_json("get", "connections")["connections"]}
        one = rows[str(h1.getsockname()[1])]
        two = rows[str(h2.sock.getsockname()[1])]
        for row in (one, two):
            assert row["requests"] == 2, row
            assert row["bytes_in"] > 60 and row["bytes_out"] > 2000, row
            assert row["rule"] == "site", row       # the last request's, while idle
    finally:
        h1.close()
        h2.close()
