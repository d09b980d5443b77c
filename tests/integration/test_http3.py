"""End to end, HTTP/3: a real vaned serving QUIC next to TLS on one port, and aioquic's client
(in a subprocess: it runs on asyncio, the tests on gevent). Proxy both ways with 20 MiB
checksummed, a respond rule, two names by SNI, Alt-Svc over HTTP/1.1 and HTTP/2, a reload
during an in-flight request, QUIC connections in get_connections, and the compile error for
an l4 UDP rule on an HTTP/3 port."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time

import gevent
import httpx
import pytest
import trustme

from tests.support.backends import UdpEcho
from tests.support.config import http_proxy, proxy, rule, write_config
from tests.support.daemon import ROOT, VANE, Vaned, clean_environ
from tests.support.http_backend import Backend, pattern
from tests.support.net import free_port, wait_until
from tests.support.tls import write_cert

pytestmark = pytest.mark.timeout(120)

MIB = 1 << 20


class Env:
    pass


def respond(body: str) -> dict:
    return {"respond": {"input": {"status": 200, "body": body}}}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("h3")
    e = Env()
    e.root = root
    e.ca = trustme.CA()
    e.ca_path = str(root / "ca.pem")
    e.ca.cert_pem.write_to_path(e.ca_path)
    for host in ("a.test", "b.test", "ws.test"):
        write_cert(e.ca, root / "certs", host)
    e.backend = Backend("origin")
    e.port = free_port()
    listen = [f"127.0.0.1:{e.port}"]

    def site(name, host, flow):
        r = rule(name, flow, listen=listen, match={"req.host": host})
        r["tls"] = {"cert": f"certs/{host}.pem", "key": f"certs/{host}.key", "http3": True}
        return r

    e.rules = {"10-a.json": site("site-a", "a.test", http_proxy(e.backend.url)),
               "15-ws.json": site("site-ws", "ws.test", http_proxy(e.backend.url)),
               "20-b.json": site("site-b", "b.test", respond("b says {{req.version}} {{tls.sni}}\n"))}
    write_config(root, e.rules, config={})
    e.flow_log = root / "flow.jsonl"
    e.vaned = Vaned(root, {"VANE_FLOW_LOG_FILE": str(e.flow_log)}).wait_accepting(e.port)
    e.vaned.wait_listening(e.port, "udp")
    yield e
    e.vaned.stop()
    e.backend.stop()


def h3(env, path: str, sni: str = "a.test", *args: str, timeout: float = 60.0) -> list[dict]:
    """Run the HTTP/3 client; its JSON lines (one per request)."""
    cmd = [sys.executable, "-m", "tests.support.h3client", f"https://127.0.0.1:{env.port}{path}",
           "--sni", sni, "--ca", env.ca_path, *args]
    proc = subprocess.run(cmd, cwd=str(ROOT), capture_output=True, text=True, timeout=timeout)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    return lines


def test_respond_rule_over_http3_by_sni(env):
    [res] = h3(env, "/x", "b.test", "--show")
    assert res["status"] == 200, res
    assert res["body"] == "b says 3 b.test\n"


def test_proxy_get_through_http3_reaches_the_http1_backend(env):
    [res] = h3(env, "/headers", "a.test", "--show")
    assert res["status"] == 200, res
    seen = json.loads(res["body"])
    assert seen["path"] == "/headers"
    assert dict(res["headers"])["x-backend"] == "origin"


def test_two_names_get_their_own_certificates(env):
    # the client verifies the chain against the CA and the name it asked for
    [a] = h3(env, "/a", "a.test")
    [b] = h3(env, "/b", "b.test", "--show")
    assert a["status"] == 200 and b["status"] == 200
    assert b["body"].endswith("b.test\n")


def test_20_mib_download_intact(env):
    n = 20 * MIB
    [res] = h3(env, f"/data?n={n}&stream=1", "a.test")
    assert res["status"] == 200, res
    assert res["length"] == n
    assert res["sha256"] == hashlib.sha256(pattern(n)).hexdigest()


def test_20_mib_upload_intact(env):
    n = 20 * MIB
    [res] = h3(env, "/hash", "a.test", "--method", "POST", "--upload", str(n), "--show")
    assert res["status"] == 200, res
    info = json.loads(res["body"])
    assert info["length"] == n
    assert info["sha256"] == hashlib.sha256(pattern(n)).hexdigest()


def test_several_requests_on_one_connection(env):
    lines = h3(env, "/x", "b.test", "--repeat", "5")
    assert [r["status"] for r in lines] == [200] * 5


def test_unknown_name_gets_421(env):
    [res] = h3(env, "/x", "a.test", "--show", "--authority", "nobody.test")
    assert res["status"] == 421


def test_alt_svc_over_http1_and_http2(env):
    ctx = ssl.create_default_context(cafile=env.ca_path)
    ctx.set_alpn_protocols(["http/1.1"])
    with socket.create_connection(("127.0.0.1", env.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="b.test") as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    head = data.split(b"\r\n\r\n")[0].lower()
    assert f'alt-svc: h3=":{env.port}"'.encode() in head
    transport = httpx.HTTPTransport(verify=ctx_h2(env), http2=True, retries=0)
    with httpx.Client(transport=transport, http2=True) as client:
        r = client.get(f"https://127.0.0.1:{env.port}/x", headers={"host": "b.test"},
                       extensions={"sni_hostname": "b.test"})
    assert r.http_version == "HTTP/2"
    assert r.headers["alt-svc"] == f'h3=":{env.port}"; ma=86400'


def ctx_h2(env) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=env.ca_path)
    ctx.set_alpn_protocols(["h2"])
    return ctx


def test_quic_connection_in_get_connections_and_reload_lets_it_finish(env):
    cmd = [sys.executable, "-m", "tests.support.h3client", f"https://127.0.0.1:{env.port}/sleep?s=2",
           "--sni", "a.test", "--ca", env.ca_path, "--show"]
    proc = subprocess.Popen(cmd, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        conns = wait_until(lambda: [c for c in env.vaned.mgmt("get_connections")["connections"]
                                    if c["proto"] == "udp" and c["layer"] == "l7"], timeout=10)
        assert conns[0]["listener"] == f"udp 127.0.0.1:{env.port}"
        assert conns[0]["rule"] == "site-a"
        changed = dict(env.rules)
        changed["20-b.json"] = json.loads(json.dumps(changed["20-b.json"]).replace("b says", "b now says"))
        write_config(env.root, changed, config={})
        res = env.vaned.cli("reload")
        assert res.returncode == 0, res.stdout + res.stderr
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    [res] = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert res["status"] == 200, (res, err[-2000:])
    assert res["body"] == "slept"
    [after] = h3(env, "/x", "b.test", "--show")
    assert after["body"].startswith("b now says 3")


def test_l4_udp_rule_on_an_http3_port_is_a_compile_error(tmp_path):
    port = free_port()
    write_cert(trustme.CA(), tmp_path / "certs", "a", "a.test")
    web = rule("web", respond("x"), listen=f"127.0.0.1:{port}")
    web["tls"] = {"cert": "certs/a.pem", "key": "certs/a.key", "http3": True}
    dns = rule("dns", {"proxy": {"input": {"target": "127.0.0.1:53"}}}, listen=f"udp:127.0.0.1:{port}")
    write_config(tmp_path, {"10-web.json": web, "20-dns.json": dns}, config={})
    res = subprocess.run([*VANE, "compile", str(tmp_path)], env=clean_environ(), cwd=str(ROOT),
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 1
    assert "10-web.json" in res.stderr + res.stdout
    assert "/tls/http3" in res.stderr + res.stdout
    assert '"dns"' in res.stderr + res.stdout
    assert "Traceback" not in res.stderr


def test_hostile_datagrams_do_not_disturb_the_listener(env):
    """Garbage, a short Initial, an unknown version (answered by version negotiation):
    none of them costs a connection, and HTTP/3 goes on."""
    for junk in (b"\x00" * 50, b"\xc0\x00\x00\x00\x01\x08" + b"\x01" * 8 + b"\x00" * 21):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as j:
            j.sendto(junk, ("127.0.0.1", env.port))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    # long header, version 0x1a2a3a4a (reserved for negotiation tests), padded to 1200 bytes
    pkt = b"\xc0" + bytes.fromhex("1a2a3a4a") + b"\x08" + b"\x02" * 8 + b"\x08" + b"\x03" * 8
    s.sendto(pkt + b"\x00" * (1200 - len(pkt)), ("127.0.0.1", env.port))
    vn = None
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            data, _ = s.recvfrom(2048)
        except (TimeoutError, socket.timeout):
            break
        if data[1:5] == b"\x00\x00\x00\x00":
            vn = data
            break
    s.close()
    assert vn is not None, "no version negotiation answer"
    assert b"\x00\x00\x00\x01" in vn[5:]
    [res] = h3(env, "/x", "b.test")
    assert res["status"] == 200
    gevent.sleep(0)


def test_websocket_over_http3_echoes_one_mib_and_keeps_the_close_code(env):
    [res] = h3(env, "/ws", "ws.test", "--ws", str(MIB))
    assert res["status"] == 200, res
    assert dict(res["headers"])["x-backend"] == "origin"
    assert res["echo_ok"] is True
    assert res["close_code"] == 4001


def test_flow_log_records_http3_requests(env):
    [res] = h3(env, "/flowlog-probe", "b.test")
    assert res["status"] == 200
    entries = wait_until(lambda: [e for e in _flow(env) if e.get("path") == "/flowlog-probe"], timeout=5)
    assert entries[0]["version"] == "3"
    assert entries[0]["listener"] == f"udp 127.0.0.1:{env.port}"


def _flow(env) -> list[dict]:
    if not env.flow_log.exists():
        return []
    return [json.loads(line) for line in env.flow_log.read_text().splitlines() if line.startswith("{")]


def test_drain_lets_an_http3_download_finish(tmp_path):
    """SIGTERM while a 20 MiB HTTP/3 download is in flight: it completes intact, then vaned
    exits 0."""
    ca = trustme.CA()
    ca_path = str(tmp_path / "ca.pem")
    ca.cert_pem.write_to_path(ca_path)
    write_cert(ca, tmp_path / "certs", "a", "a.test")
    backend = Backend("slow")
    port = free_port()
    r = rule("a", http_proxy(backend.url), listen=f"127.0.0.1:{port}")
    r["tls"] = {"cert": "certs/a.pem", "key": "certs/a.key", "http3": True}
    write_config(tmp_path, {"10-a.json": r}, config={})
    vaned = Vaned(tmp_path).wait_accepting(port)
    n = 20 * MIB
    cmd = [sys.executable, "-m", "tests.support.h3client", f"https://127.0.0.1:{port}/sleep?s=1",
           "--sni", "a.test", "--ca", ca_path, "--repeat", "1"]
    big = [sys.executable, "-m", "tests.support.h3client", f"https://127.0.0.1:{port}/data?n={n}&stream=1",
           "--sni", "a.test", "--ca", ca_path]
    try:
        vaned.wait_listening(port, "udp")
        slow = subprocess.Popen(cmd, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        download = subprocess.Popen(big, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_until(lambda: len([c for c in vaned.mgmt("get_connections")["connections"]
                                if c["proto"] == "udp" and c["layer"] == "l7"]) == 2, timeout=10)
        vaned.signal(15)
        out_slow, _ = slow.communicate(timeout=30)
        out_big, err_big = download.communicate(timeout=30)
        assert vaned.wait(15) == 0
    finally:
        for proc in ("slow", "download"):
            p = locals().get(proc)
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        if vaned.running():
            vaned.kill()
        backend.stop()
    [res_slow] = [json.loads(line) for line in out_slow.splitlines() if line.startswith("{")]
    assert res_slow["status"] == 200
    [res] = [json.loads(line) for line in out_big.splitlines() if line.startswith("{")]
    assert res.get("status") == 200, (res, err_big[-2000:])
    assert res["length"] == n
    assert res["sha256"] == hashlib.sha256(pattern(n)).hexdigest()


def _h3_site(tmp_path, env: dict[str, str], body: str = "hi\n") -> tuple[Vaned, int, str]:
    """vaned with one HTTP/3 rule for a.test answering ``body``: the daemon, its port, the CA file."""
    ca = trustme.CA()
    ca_path = str(tmp_path / "ca.pem")
    ca.cert_pem.write_to_path(ca_path)
    write_cert(ca, tmp_path / "certs", "a", "a.test")
    port = free_port()
    r = rule("a", respond(body), listen=f"127.0.0.1:{port}")
    r["tls"] = {"cert": "certs/a.pem", "key": "certs/a.key", "http3": True}
    write_config(tmp_path, {"10-a.json": r}, config={})
    vaned = Vaned(tmp_path, env).wait_accepting(port)
    vaned.wait_listening(port, "udp")
    return vaned, port, ca_path


def test_http3_with_two_workers(tmp_path):
    """Each worker reads its own SO_REUSEPORT socket; every connection is served whole by
    the worker its client address hashes to."""
    vaned, port, ca_path = _h3_site(tmp_path, {"VANE_WORKERS": "2"}, "hi {{req.version}}\n")
    try:
        cmd = [sys.executable, "-m", "tests.support.h3client", f"https://127.0.0.1:{port}/",
               "--sni", "a.test", "--ca", ca_path, "--show", "--repeat", "3"]
        procs = [subprocess.Popen(cmd, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(4)]
        outs = [p.communicate(timeout=60)[0] for p in procs]
    finally:
        vaned.stop()
    for out in outs:
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert [r.get("body") for r in lines] == ["hi 3\n"] * 3, out


def _initial_datagrams(port: int) -> list[bytes]:
    """A client's first flight (its Initial, padded), made by aioquic's sans-I/O core."""
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    config = QuicConfiguration(is_client=True, alpn_protocols=["h3"], server_name="a.test")
    client = QuicConnection(configuration=config)
    client.connect(("127.0.0.1", port), now=time.monotonic())
    return [data for data, _ in client.datagrams_to_send(now=time.monotonic())]


def test_quic_handshakes_count_against_the_per_ip_limit(tmp_path):
    """VANE_SEC_TLS_HANDSHAKES_PER_IP=1: of three Initials from one IP within a second, one
    gets a handshake answer; the others get nothing (no amplification, no connection)."""
    vaned, port, _ = _h3_site(tmp_path, {"VANE_SEC_TLS_HANDSHAKES_PER_IP": "1"})
    socks = []
    try:
        time.sleep(1.1)     # the readiness probe's TLS handshake leaves the one-second window
        flights = [_initial_datagrams(port) for _ in range(3)]
        for _ in flights:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(2)
            socks.append(s)
        for s, flight in zip(socks, flights, strict=True):
            for data in flight:
                s.sendto(data, ("127.0.0.1", port))
        answered = 0
        for s in socks:
            try:
                s.recvfrom(4096)
                answered += 1
            except (TimeoutError, socket.timeout):
                pass
        assert answered == 1
        assert vaned.wait_log("tls_handshakes_per_ip", timeout=5) >= 0
    finally:
        for s in socks:
            s.close()
        vaned.stop()


def test_header_section_past_the_limit_gets_431_and_the_connection_goes_on(env):
    """VANE_SEC_MAX_HEADER_BYTES (64 KiB) holds over HTTP/3 as over HTTP/1.1 and HTTP/2: a field
    of 90 KiB (about 56 KiB on the wire once Huffman-coded) is refused once decoded, one of
    300 KiB while its HEADERS frame is still arriving; the next request on the same connection
    is served."""
    for size in (90 * 1024, 300 * 1024):
        lines = h3(env, "/x", "b.test", "--header-bytes", str(size), "--repeat", "2")
        assert len(lines) == 2, (size, lines)
        first, second = lines
        assert first["status"] == 431, first
        assert second["status"] == 431, second
    [ok] = h3(env, "/x", "b.test", "--header-bytes", str(30 * 1024))
    assert ok["status"] == 200, ok


def test_qpack_dynamic_table_is_off(env):
    """SETTINGS_QPACK_MAX_TABLE_CAPACITY (0x01) is 0: a client cannot make a small HEADERS frame
    expand into a large header section by referring to the dynamic table again and again."""
    res = h3(env, "/x", "b.test", "--settings")
    settings = res[-1]["settings"]
    assert settings.get("1", 0) == 0, settings
    assert settings.get("7", 0) == 0, settings


def test_expect_100_continue_over_http3(env):
    """A client that holds its body back for ``Expect: 100-continue`` gets the 100 when the
    flow reads the body, then its upload goes through whole."""
    [res] = h3(env, "/hash", "a.test", "--method", "PUT", "--upload", str(MIB), "--expect", "--show",
               "--timeout", "10", timeout=30.0)
    assert res.get("interim") == [100], res
    assert res["status"] == 200, res
    got = json.loads(res["body"])
    assert got["length"] == MIB and got["sha256"] == hashlib.sha256(pattern(MIB)).hexdigest()


def test_an_endless_frame_on_the_control_stream_ends_the_connection(env):
    """aioquic would hold a MAX_PUSH_ID frame whole however long it says it is: past the header
    limit the connection ends with H3_EXCESSIVE_LOAD (0x107), and vaned goes on serving."""
    [res] = h3(env, "/x", "b.test", "--control-junk", str(300 * 1024), "--timeout", "10")
    assert "error" in res and "263" in res["error"], res
    [ok] = h3(env, "/x", "b.test")
    assert ok["status"] == 200


# -- connection IDs: migration and stateless reset ------------------------------------------------

@pytest.mark.parametrize("new_cid", [False, True], ids=["rebinding", "migration"])
def test_connection_goes_on_from_a_new_client_address(env, new_cid):
    """The client's port changes before every request (a NAT rebinding; with a fresh
    connection ID, an active migration): vaned finds the connection by its ID, validates
    the new path and answers there, all on one connection."""
    path = f"/moved-{int(new_cid)}"
    lines = h3(env, path, "b.test", "--repeat", "4", "--rebind", *(["--new-cid"] if new_cid else []))
    assert [r.get("status") for r in lines] == [200] * 4, lines
    assert len({r["port"] for r in lines}) == 4
    entries = wait_until(lambda: (e := [x for x in _flow(env) if x.get("path") == path]) and len(e) == 4 and e,
                         timeout=5)
    assert len({e["conn"] for e in entries}) == 1
    assert len({e["remote"] for e in entries}) == 1     # logged (and limited) as the address it began at


def _reset_for(port: int, packet: bytes, sock: socket.socket | None = None, seconds: float = 5.0) -> bytes | None:
    """Send ``packet`` until a datagram comes back (a connection just closed is held a
    moment longer); that datagram, or None."""
    own = sock is None
    s = sock or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.2)
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            s.sendto(packet, ("127.0.0.1", port))
            try:
                return s.recvfrom(2048)[0]
            except (TimeoutError, socket.timeout):
                continue
        return None
    finally:
        if own:
            s.close()


def _ended_connection_ids(port: int, ca_path: str) -> tuple[bytes, bytes]:
    """The connection ID a real client last sent to, and the reset token vaned gave it for
    that ID, once the client closed the connection."""
    cmd = [sys.executable, "-m", "tests.support.h3client", f"https://127.0.0.1:{port}/",
           "--sni", "a.test", "--ca", ca_path, "--ids"]
    out = subprocess.run(cmd, cwd=str(ROOT), capture_output=True, text=True, timeout=60).stdout
    ids = [json.loads(line) for line in out.splitlines() if '"cid"' in line]
    assert ids, out
    return bytes.fromhex(ids[0]["cid"]), bytes.fromhex(ids[0]["token"])


def _assert_reset(reply: bytes | None, packet: bytes, token: bytes) -> None:
    assert reply is not None, "no stateless reset"
    assert reply[0] & 0xC0 == 0x40              # looks like a short-header packet
    assert 21 <= len(reply) < len(packet)        # smaller than what triggered it: no amplification, no loop
    assert reply[-16:] == token                  # the token the client was given for this ID


def test_a_datagram_for_a_connection_that_ended_gets_a_stateless_reset(env):
    cid, token = _ended_connection_ids(env.port, env.ca_path)
    packet = b"\x41" + cid + bytes(40)
    _assert_reset(_reset_for(env.port, packet), packet, token)
    # a datagram too short to be answered by a smaller reset gets nothing
    assert _reset_for(env.port, b"\x41" + cid + bytes(12), seconds=0.6) is None
    [res] = h3(env, "/x", "b.test")
    assert res["status"] == 200


def _serving_workers(vaned: Vaned) -> list[int]:
    """The pids of the workers, once both serve."""
    def both() -> list[int] | None:
        ws = vaned.mgmt("stats")["workers"]
        return [w["pid"] for w in ws] if [w["state"] for w in ws] == ["serving", "serving"] else None
    pids = wait_until(both, timeout=30, interval=0.2)
    assert pids, vaned.stderr[-2000:]
    return pids


def _follow_six_rebindings(vaned: Vaned, port: int, ca_path: str) -> None:
    cmd = [sys.executable, "-m", "tests.support.h3client", f"https://127.0.0.1:{port}/",
           "--sni", "a.test", "--ca", ca_path, "--repeat", "7", "--rebind", "--timeout", "10"]
    out = subprocess.run(cmd, cwd=str(ROOT), capture_output=True, text=True, timeout=120).stdout
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r.get("status") for r in lines] == [200] * 7, (lines, vaned.stderr[-2000:])
    assert len({r["port"] for r in lines}) == 7
    assert vaned.find("cannot steer QUIC datagrams") == -1


def test_with_workers_a_connection_follows_its_client_to_a_new_address(tmp_path):
    """Two workers: the kernel steers datagrams by connection ID (the worker that issued
    it), not by address, so six rebindings in a row all reach the connection's worker.
    (Steered by address, each would land on the other worker half of the time.)"""
    vaned, port, ca_path = _h3_site(tmp_path, {"VANE_WORKERS": "2"})
    try:
        _serving_workers(vaned)
        _follow_six_rebindings(vaned, port, ca_path)
    finally:
        vaned.stop()


def test_a_udp_port_that_starts_serving_http3_in_a_reload_is_steered_by_connection_id(tmp_path):
    vaned, port, ca_path = _h3_site(tmp_path, {"VANE_WORKERS": "2"})
    echo = UdpEcho()
    try:
        _serving_workers(vaned)
        site = json.loads((tmp_path / "rules" / "10-a.json").read_text())
        write_config(tmp_path, {"10-a.json": rule("a", proxy(echo.target), listen=f"udp:127.0.0.1:{port}")})
        assert vaned.cli("reload").returncode == 0
        write_config(tmp_path, {"10-a.json": site})   # the same UDP listener serves HTTP/3 again
        assert vaned.cli("reload").returncode == 0
        vaned.wait_accepting(port)
        _follow_six_rebindings(vaned, port, ca_path)
    finally:
        echo.close()
        vaned.stop()


def test_reset_tokens_outlive_the_worker_that_issued_them(tmp_path):
    """The reset key is the daemon's, not a worker's: after both workers were killed and
    replaced, a datagram for a connection of the old ones gets a reset with its token."""
    vaned, port, ca_path = _h3_site(tmp_path, {"VANE_WORKERS": "2"})
    try:
        old = _serving_workers(vaned)
        cid, token = _ended_connection_ids(port, ca_path)
        packet = b"\x41" + cid + bytes(60)
        _assert_reset(_reset_for(port, packet), packet, token)
        for pid in old:
            os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not set(_serving_workers(vaned)) & set(old), timeout=30, interval=0.2)
        _assert_reset(_reset_for(port, packet), packet, token)
        assert "Traceback" not in vaned.stderr
    finally:
        vaned.stop()


def test_a_port_that_stops_serving_http3_is_steered_by_address_again(tmp_path):
    """A reload turns the HTTP/3 port into an l4 UDP relay: one client's datagrams reach one
    worker again, whatever their first bytes (steered by connection ID, they would be split)."""
    vaned, port, _ = _h3_site(tmp_path, {"VANE_WORKERS": "2"})
    echo = UdpEcho()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(2)
    try:
        _serving_workers(vaned)
        write_config(tmp_path, {"10-a.json": rule("a", proxy(echo.target), listen=f"udp:127.0.0.1:{port}")})
        res = vaned.cli("reload")
        assert res.returncode == 0, res.stdout + res.stderr
        for i in range(6):      # short-header look-alikes whose "connection ID" bytes differ
            data = b"\x40" + bytes([i]) + b"datagram"
            client.sendto(data, ("127.0.0.1", port))
            assert client.recvfrom(2048)[0] == b"echo:" + data
        assert len(set(echo.sources)) == 1          # one session: one worker relayed them all
    finally:
        client.close()
        echo.close()
        vaned.stop()


# -- Retry (address validation) ---------------------------------------------------------------

def _ids(port: int, ca_path: str) -> dict:
    cmd = [sys.executable, "-m", "tests.support.h3client", f"https://127.0.0.1:{port}/",
           "--sni", "a.test", "--ca", ca_path, "--ids", "--show"]
    out = subprocess.run(cmd, cwd=str(ROOT), capture_output=True, text=True, timeout=60).stdout
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert lines and lines[0].get("body") == "hi\n", out
    return lines[-1]


def test_retry_above_the_threshold_then_the_connection_as_usual(tmp_path):
    """VANE_SEC_QUIC_RETRY_THRESHOLD=0: every new client first gets a Retry and comes back
    with its token; by default (100 handshakes in progress) nobody does."""
    vaned, port, ca_path = _h3_site(tmp_path, {"VANE_SEC_QUIC_RETRY_THRESHOLD": "0"})
    try:
        assert _ids(port, ca_path)["retried"] is True
    finally:
        vaned.stop()
    vaned, port, ca_path = _h3_site(tmp_path, {})
    try:
        assert _ids(port, ca_path)["retried"] is False
    finally:
        vaned.stop()


def test_a_spoofed_initial_gets_only_a_small_retry_and_costs_no_handshake(tmp_path):
    """Initials from an address that does not read its answers (spoofed) get a Retry each,
    smaller than the Initial, and no handshake: not even the per-IP handshake budget is spent,
    so a real client from that address connects right after. A forged token is refused."""
    vaned, port, ca_path = _h3_site(tmp_path, {"VANE_SEC_QUIC_RETRY_THRESHOLD": "0",
                                               "VANE_SEC_TLS_HANDSHAKES_PER_IP": "1"})
    socks = []
    try:
        time.sleep(1.1)     # the readiness probe's TLS handshake leaves the one-second window
        for flight in [_initial_datagrams(port) for _ in range(5)]:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(2)
            socks.append(s)
            for data in flight:
                s.sendto(data, ("127.0.0.1", port))
            answer, _ = s.recvfrom(4096)
            assert answer[0] & 0xF0 == 0xF0                 # long header, type Retry
            assert len(answer) < 200 < len(flight[0])
        assert vaned.find("tls_handshakes_per_ip") == -1
        assert _ids(port, ca_path)["retried"] is True
        # an Initial whose token vaned never made: closed with INVALID_TOKEN, no handshake
        from aioquic.quic.configuration import QuicConfiguration
        from aioquic.quic.connection import QuicConnection
        client = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=["h3"],
                                                                server_name="a.test", token=b"forged" * 8))
        client.connect(("127.0.0.1", port), now=time.monotonic())
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        socks.append(s)
        for data, _ in client.datagrams_to_send(now=time.monotonic()):
            s.sendto(data, ("127.0.0.1", port))
        answer, _ = s.recvfrom(4096)
        client.receive_datagram(answer, ("127.0.0.1", port), now=time.monotonic())
        client.handle_timer(now=time.monotonic() + 60)      # past the draining period: the close is reported
        closed = [e for e in iter(client.next_event, None) if e.__class__.__name__ == "ConnectionTerminated"]
        assert closed and closed[0].error_code == 0x0B      # INVALID_TOKEN
        assert "Traceback" not in vaned.stderr
    finally:
        for s in socks:
            s.close()
        vaned.stop()
