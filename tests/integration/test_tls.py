"""TLS termination over real loopback sockets: SNI, ALPN, versions, timeouts, resumption, streaming."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import time

import gevent
import pytest
import trustme
from cryptography import x509
from gevent.server import StreamServer

from tests.support.net import wait_until
from vane.net.tls.certs import ContextCache, TLSConfigError
from vane.net.tls.server import ServerTLS
from vane.net.tls.stream import TLSHandshakeError, TLSHandshakeTimeout, TLSStream


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def certs(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    root = tmp_path_factory.mktemp("certs")
    out = {}
    for name, hosts in (("a", ["a.test"]), ("b", ["b.test", "*.wild.test"])):
        issued = ca.issue_cert(*hosts)
        cert_path, key_path = root / f"{name}.pem", root / f"{name}.key"
        issued.cert_chain_pems[0].write_to_path(str(cert_path))
        issued.private_key_pem.write_to_path(str(key_path))
        out[name] = (str(cert_path), str(key_path))
    ca_path = root / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    out["ca"] = (str(ca_path), "")
    return out


class TLSServer:
    """A loopback StreamServer that terminates TLS and hands the stream to ``app``."""

    def __init__(self, tls: ServerTLS, app=None) -> None:
        self.tls = tls
        self.app = app
        self.errors: list[BaseException] = []
        self.streams: list[TLSStream] = []
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()
        self.port = self.server.server_port

    def _handle(self, sock: socket.socket, addr) -> None:
        try:
            stream = self.tls.accept(sock)
        except (TLSHandshakeError, OSError) as exc:
            self.errors.append(exc)
            sock.close()
            return
        self.streams.append(stream)
        try:
            if self.app is not None:
                self.app(stream)
        finally:
            stream.close()

    def stop(self) -> None:
        self.server.stop(timeout=1)


def client_ctx(ca: trustme.CA, alpn=None, maximum=None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if maximum is not None:
        ctx.maximum_version = maximum
    return ctx


def connect(port: int, ctx: ssl.SSLContext, hostname: str | None, session=None) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return ctx.wrap_socket(raw, server_hostname=hostname, session=session)


def peer_names(tls_sock: ssl.SSLSocket) -> list[str]:
    der = tls_sock.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return san.value.get_values_for_type(x509.DNSName)


def echo(stream: TLSStream) -> None:
    stream.settimeout(10)
    while True:
        data = stream.recv(65536)
        if not data:
            break
        stream.sendall(data)
    stream.shutdown_write()


@pytest.fixture
def two_cert_server(certs):
    server = TLSServer(ServerTLS([certs["a"], certs["b"]]), echo)
    yield server
    server.stop()


def test_sni_picks_matching_certificate(ca, two_cert_server):
    ctx = client_ctx(ca)
    for host, expected in (("a.test", "a.test"), ("b.test", "b.test"), ("x.wild.test", "b.test")):
        with connect(two_cert_server.port, ctx, host) as s:
            assert expected in peer_names(s)
    assert wait_until(lambda: len(two_cert_server.streams) == 3)
    assert two_cert_server.streams[0].sni == "a.test"
    assert two_cert_server.streams[2].sni == "x.wild.test"


def test_unknown_sni_gets_default_certificate(ca, two_cert_server):
    ctx = client_ctx(ca)
    ctx.check_hostname = False
    for host in ("unknown.test", "deep.x.wild.test", None):
        with connect(two_cert_server.port, ctx, host) as s:
            assert peer_names(s) == ["a.test"]


def test_alpn_follows_server_preference(ca, two_cert_server):
    cases = ((["http/1.1", "h2"], "h2"), (["http/1.1"], "http/1.1"), (None, None), (["spdy/3"], None))
    for offered, expected in cases:
        with connect(two_cert_server.port, client_ctx(ca, offered), "a.test") as s:
            assert s.selected_alpn_protocol() == expected
    assert wait_until(lambda: len(two_cert_server.streams) == 4)
    assert [st.alpn for st in two_cert_server.streams] == ["h2", "http/1.1", "", ""]
    assert all(st.version in ("TLSv1.2", "TLSv1.3") and st.cipher for st in two_cert_server.streams)


def test_alpn_http11_only_listener(ca, certs):
    server = TLSServer(ServerTLS([certs["a"]], alpn=("http/1.1",)), echo)
    try:
        with connect(server.port, client_ctx(ca, ["h2", "http/1.1"]), "a.test") as s:
            assert s.selected_alpn_protocol() == "http/1.1"
    finally:
        server.stop()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls11_client_is_refused(ca, two_cert_server):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, OSError)):
        with connect(two_cert_server.port, ctx, "a.test"):
            pass
    assert wait_until(lambda: two_cert_server.errors)
    assert isinstance(two_cert_server.errors[0], TLSHandshakeError)


def test_tls12_and_tls13_both_accepted(ca, two_cert_server):
    for version, name in ((ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")):
        ctx = client_ctx(ca, maximum=version)
        ctx.minimum_version = version
        with connect(two_cert_server.port, ctx, "a.test") as s:
            assert s.version() == name
            s.sendall(b"ping")
            assert s.recv(4) == b"ping"


def test_handshake_timeout_closes_silent_client(certs):
    server = TLSServer(ServerTLS([certs["a"]], handshake_timeout=0.3))
    try:
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        started = time.monotonic()
        assert raw.recv(100) == b""  # the server gave up and closed
        assert time.monotonic() - started < 3
        raw.close()
        assert isinstance(server.errors[0], TLSHandshakeTimeout)
    finally:
        server.stop()


def test_bare_accepted_socket_terminates_and_times_out(ca, certs):
    """The daemon hands the handshake the kernel socket as accepted (non-blocking, no gevent
    wrapper): the stream's own watchers carry a whole exchange, and the handshake timeout."""
    from gevent import socket as gsocket

    from vane.net.sockets import accept_raw

    tls = ServerTLS([certs["a"]], handshake_timeout=0.3)
    listener = gsocket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    outcomes: list = []

    def serve_one() -> None:
        sock, _ = accept_raw(listener)
        try:
            stream = tls.accept(sock)
        except TLSHandshakeError as exc:
            outcomes.append(exc)
            return
        outcomes.append(stream.recv(100))
        stream.sendall(b"pong")
        stream.close()

    port = listener.getsockname()[1]
    try:
        g = gevent.spawn(serve_one)
        with connect(port, client_ctx(ca), "a.test") as s:
            time.sleep(0.2)                  # the server's read waits (no timeout of its own)
            s.sendall(b"ping")
            assert s.recv(4) == b"pong"
        g.join(5)
        assert outcomes == [b"ping"]
        g = gevent.spawn(serve_one)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            started = time.monotonic()
            assert raw.recv(100) == b""      # silent: closed at the handshake timeout
            assert time.monotonic() - started < 3
        g.join(5)
        assert isinstance(outcomes[1], TLSHandshakeTimeout)
    finally:
        listener.close()


def test_echo_5mib_intact(ca, two_cert_server):
    payload = os.urandom(5 * 1024 * 1024)
    with connect(two_cert_server.port, client_ctx(ca), "a.test") as s:
        s.settimeout(20)

        def send() -> None:
            view = memoryview(payload)
            for off in range(0, len(payload), 100_000):
                s.sendall(view[off:off + 100_000])

        sender = gevent.spawn(send)
        digest = hashlib.sha256()
        received = 0
        while received < len(payload):
            chunk = s.recv(262144)
            assert chunk
            digest.update(chunk)
            received += len(chunk)
        sender.get(timeout=10)
        assert digest.hexdigest() == hashlib.sha256(payload).hexdigest()


def test_shutdown_write_keeps_read_side(ca, certs):
    got: list[bytes] = []

    def app(stream: TLSStream) -> None:
        stream.sendall(b"hello")
        stream.shutdown_write()
        buf = bytearray(64)
        while True:
            n = stream.recv_into(buf)
            if not n:
                break
            got.append(bytes(buf[:n]))

    server = TLSServer(ServerTLS([certs["a"]]), app)
    try:
        with connect(server.port, client_ctx(ca), "a.test") as s:
            assert s.recv(5) == b"hello"
            assert s.recv(5) == b""  # close_notify
            s.sendall(b"still-open")
            s.unwrap().close()
        assert wait_until(lambda: b"".join(got) == b"still-open")
    finally:
        server.stop()


def test_recv_timeout(ca, certs):
    outcome: list[BaseException] = []

    def app(stream: TLSStream) -> None:
        stream.settimeout(0.2)
        try:
            stream.recv(10)
        except socket.timeout as exc:
            outcome.append(exc)

    server = TLSServer(ServerTLS([certs["a"]]), app)
    try:
        with connect(server.port, client_ctx(ca), "a.test") as s:
            s.settimeout(5)
            assert s.recv(10) == b""
        assert outcome and isinstance(outcome[0], socket.timeout)
    finally:
        server.stop()


def test_close_wakes_blocked_reader(ca, certs):
    result: list[object] = []

    def app(stream: TLSStream) -> None:
        def reader() -> None:
            try:
                result.append(stream.recv(10))
            except OSError as exc:
                result.append(exc)

        g = gevent.spawn(reader)
        gevent.sleep(0.1)
        stream.close()
        g.join(timeout=2)

    server = TLSServer(ServerTLS([certs["a"]]), app)
    try:
        with connect(server.port, client_ctx(ca), "a.test") as s:
            s.settimeout(5)
            assert s.recv(10) == b""
        assert result and isinstance(result[0], OSError)
    finally:
        server.stop()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest.mark.parametrize("host", ["a.test", "b.test"])
def test_session_resumes_across_reload(ca, certs, version, host):
    cache = ContextCache()
    ctx = client_ctx(ca, maximum=version)
    ctx.minimum_version = version

    def handshake(server: TLSServer, session=None) -> tuple[ssl.SSLSession, bool]:
        with connect(server.port, ctx, host, session=session) as s:
            s.sendall(b"x")
            assert s.recv(1) == b"x"  # TLS 1.3 tickets arrive after the handshake
            reused = s.session_reused
            return s.session, reused

    first = TLSServer(ServerTLS([certs["a"], certs["b"]], cache=cache), echo)
    session, reused = handshake(first)
    assert not reused
    first.stop()

    # A reload builds a new ServerTLS (here on a new listener) from the same cache.
    second = TLSServer(ServerTLS([certs["a"], certs["b"]], cache=cache), echo)
    try:
        assert handshake(second, session)[1]
    finally:
        second.stop()

    # Without the shared cache the ticket keys differ and the session cannot resume.
    third = TLSServer(ServerTLS([certs["a"], certs["b"]], cache=ContextCache()), echo)
    try:
        assert not handshake(third, session)[1]
    finally:
        third.stop()


def test_cache_reuses_contexts_until_files_change(certs, tmp_path):
    cache = ContextCache()
    cert_path, key_path = tmp_path / "c.pem", tmp_path / "c.key"
    shutil.copy(certs["a"][0], cert_path)
    shutil.copy(certs["a"][1], key_path)
    one = cache.load(str(cert_path), str(key_path))
    assert cache.load(str(cert_path), str(key_path)) is one
    shutil.copy(certs["b"][0], cert_path)
    shutil.copy(certs["b"][1], key_path)
    two = cache.load(str(cert_path), str(key_path))
    assert two is not one and "b.test" in two.info["sans"]


def test_combined_pem_file(ca, certs, tmp_path):
    combined = tmp_path / "combined.pem"
    combined.write_bytes(open(certs["b"][0], "rb").read() + open(certs["b"][1], "rb").read())
    server = TLSServer(ServerTLS([(str(combined), str(combined))]), echo)
    try:
        with connect(server.port, client_ctx(ca), "b.test") as s:
            assert "b.test" in peer_names(s)
    finally:
        server.stop()


def test_certs_info(certs):
    info = ServerTLS([certs["a"], certs["b"]]).certs_info()
    assert [i["sans"] for i in info] == [["a.test"], ["b.test", "*.wild.test"]]
    assert info[0]["default"] and not info[1]["default"]
    assert info[0]["path"] == os.path.abspath(certs["a"][0])
    assert "T" in info[0]["not_after"] and info[0]["subject"]


def test_bad_cert_path_names_the_path(certs, tmp_path):
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(TLSConfigError) as err:
        ServerTLS([(missing, certs["a"][1])])
    assert err.value.path == missing and missing in str(err.value)

    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(TLSConfigError) as err:
        ServerTLS([(str(garbage), certs["a"][1])])
    assert err.value.path == str(garbage)


def test_mismatched_key_names_the_key(certs):
    with pytest.raises(TLSConfigError) as err:
        ServerTLS([(certs["a"][0], certs["b"][1])])
    assert err.value.path == certs["b"][1]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_openssl_s_client_sni_and_alpn(certs, two_cert_server):
    proc = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{two_cert_server.port}",
         "-servername", "b.test", "-verify_hostname", "b.test", "-alpn", "http/1.1,h2",
         "-CAfile", certs["ca"][0]],
        input=b"", capture_output=True, timeout=20)
    out = (proc.stdout + proc.stderr).decode()
    assert "ALPN protocol: h2" in out
    assert "Verify return code: 0 (ok)" in out


# --- upstream (client) side ---------------------------------------------------------------------

from vane.net.tls.client import ClientTLSSocket, client_context, wrap  # noqa: E402


def raw_connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def test_client_verifies_by_default(two_cert_server):
    with pytest.raises(ssl.SSLCertVerificationError):
        wrap(raw_connect(two_cert_server.port), "a.test", client_context(), 5)


def test_client_with_ca_file_and_alpn(certs, two_cert_server):
    ctx = client_context(ca_file=certs["ca"][0], alpn=("h2", "http/1.1"))
    assert ctx is client_context(ca_file=certs["ca"][0], alpn=["h2", "http/1.1"])
    tls = wrap(raw_connect(two_cert_server.port), "b.test", ctx, 5)
    try:
        assert isinstance(tls, ClientTLSSocket)
        assert tls.selected_alpn_protocol() == "h2"
        assert "b.test" in peer_names(tls)
        assert wait_until(lambda: two_cert_server.streams)
        assert two_cert_server.streams[-1].sni == "b.test"
    finally:
        tls.close()


def test_client_rejects_wrong_hostname(certs, two_cert_server):
    ctx = client_context(ca_file=certs["ca"][0])
    with pytest.raises(ssl.SSLCertVerificationError):
        wrap(raw_connect(two_cert_server.port), "c.test", ctx, 5)


def test_client_verify_false_skips_checks(two_cert_server):
    tls = wrap(raw_connect(two_cert_server.port), "whatever.test", client_context(verify=False), 5)
    try:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        tls.close()


def test_client_handshake_timeout_closes_socket():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        raw = raw_connect(listener.getsockname()[1])
        with pytest.raises((socket.timeout, TimeoutError)):
            wrap(raw, "a.test", client_context(verify=False), 0.2)
        assert raw.fileno() == -1
    finally:
        listener.close()


def test_client_shutdown_write_half_closes(certs, two_cert_server):
    tls = wrap(raw_connect(two_cert_server.port), "a.test", client_context(ca_file=certs["ca"][0]), 5)
    try:
        tls.sendall(b"last words")
        tls.shutdown_write()
        received = b""
        while True:
            chunk = tls.recv(100)
            if not chunk:
                break
            received += chunk
        assert received == b"last words"
    finally:
        tls.close()
