"""WebSocket through vaned's L7 proxy: upgrade, 101, tunnel both ways (plain and TLS on either side)."""

import ssl

import httpx
import pytest
import trustme
import websocket

from tests.support.config import rule, write_config
from tests.support.daemon import Vaned
from tests.support.http_backend import Backend
from tests.support.net import free_port
from tests.support.tls import backend_tls_context

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("vaned-ws")
    ca = trustme.CA()
    plain = Backend("ws")
    secure = Backend("wss", tls=backend_tls_context(ca))
    port, tls_port = free_port(), free_port()
    (root / "certs").mkdir()
    cert = ca.issue_cert("ws.test")
    cert.cert_chain_pems[0].write_to_path(str(root / "certs" / "front.pem"))
    cert.private_key_pem.write_to_path(str(root / "certs" / "front.key"))
    ca.cert_pem.write_to_path(str(root / "certs" / "ca.pem"))

    def r(name, listen, host, flow, **extra):
        return rule(name, flow, listen=listen, match={"req.host": host}, **extra)

    listen = f"127.0.0.1:{port}"
    write_config(root, {"ws.json": [
        r("ws", listen, "ws.test", {"proxy": {"input": {"upstream": plain.url}}}),
        r("ws-off", listen, "nows.test", {"proxy": {"input": {"upstream": plain.url, "websocket": False}}}),
        r("wss-up", listen, "secure.test", {"proxy": {"input": {"upstream": secure.url, "ca_file": "certs/ca.pem"}}}),
        r("ws-tls", f"127.0.0.1:{tls_port}", "ws.test", {"proxy": {"input": {"upstream": plain.url}}},
          tls={"cert": "certs/front.pem", "key": "certs/front.key"}),
    ]}, config={})
    vaned = Vaned(root).wait_accepting(port)
    vaned.wait_accepting(tls_port)
    yield {"port": port, "tls_port": tls_port, "plain": plain, "secure": secure, "ca": str(root / "certs" / "ca.pem"),
           "vaned": vaned}
    vaned.stop()
    plain.stop()
    secure.stop()


def exercise(ws):
    ws.send("hello")
    assert ws.recv() == "hello"
    big = bytes(range(256)) * 4096          # 1 MiB binary frame
    ws.send_binary(big)
    assert ws.recv() == big
    ws.ping(b"p")
    for i in range(50):
        ws.send(f"m{i}")
    assert [ws.recv() for _ in range(50)] == [f"m{i}" for i in range(50)]


def test_websocket_echo_through_vaned(env):
    ws = websocket.create_connection(f"ws://127.0.0.1:{env['port']}/ws", host="ws.test", timeout=10)
    try:
        exercise(ws)
    finally:
        ws.close()


def test_websocket_to_tls_upstream(env):
    ws = websocket.create_connection(f"ws://127.0.0.1:{env['port']}/ws", host="secure.test", timeout=10)
    try:
        exercise(ws)
    finally:
        ws.close()


def test_websocket_over_tls_front(env):
    ws = websocket.create_connection(f"wss://127.0.0.1:{env['tls_port']}/ws", host="ws.test", timeout=10,
                                     sslopt={"ca_certs": env["ca"], "server_hostname": "ws.test",
                                             "cert_reqs": ssl.CERT_REQUIRED})
    try:
        exercise(ws)
    finally:
        ws.close()


def test_non_101_answer_is_passed_back(env):
    with pytest.raises(websocket.WebSocketBadStatusException) as err:
        websocket.create_connection(f"ws://127.0.0.1:{env['port']}/nows", host="ws.test", timeout=10)
    assert err.value.status_code == 400


def test_websocket_disabled_forwards_a_plain_request(env):
    r = httpx.get(f"http://127.0.0.1:{env['port']}/ws", timeout=10,
                  headers={"host": "nows.test", "connection": "upgrade", "upgrade": "websocket",
                           "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==", "sec-websocket-version": "13"})
    assert r.status_code == 200 and r.text == "ws /ws"
