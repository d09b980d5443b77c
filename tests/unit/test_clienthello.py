"""ClientHello parsing: real hellos captured from Python's ssl (and openssl), edge cases, fuzzing."""

from __future__ import annotations

import random
import shutil
import socket
import ssl
import struct
import subprocess

import gevent
import pytest

from vane.net.clienthello import (
    MAX_HELLO_BYTES,
    ClientHello,
    ClientHelloError,
    complete,
    needed_bytes,
    parse_client_hello,
)


def capture_hello(server_hostname: str | None = "example.com", alpn=("h2", "http/1.1"), max_tls=None) -> bytes:
    """The exact bytes Python's ssl client sends first, read by a raw loopback listener."""
    with socket.socket() as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        lst.settimeout(2)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        if max_tls is not None:
            ctx.maximum_version = max_tls

        def client() -> None:
            with socket.create_connection(lst.getsockname(), timeout=2) as s:
                try:
                    ctx.wrap_socket(s, server_hostname=server_hostname)
                except (ssl.SSLError, OSError):
                    pass

        g = gevent.spawn(client)
        conn, _ = lst.accept()
        conn.settimeout(2)
        data = b""
        with conn:
            while not complete(data):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
        g.join(timeout=2)
    return data


@pytest.fixture(scope="module")
def real_hello() -> bytes:
    return capture_hello()


# -- synthetic hellos, for shapes a real client will not produce ---------------------------


def ext(etype: int, body: bytes) -> bytes:
    return struct.pack("!HH", etype, len(body)) + body


def sni_ext(*names: bytes) -> bytes:
    entries = b"".join(b"\x00" + struct.pack("!H", len(n)) + n for n in names)
    return ext(0, struct.pack("!H", len(entries)) + entries)


def alpn_ext(*protos: bytes) -> bytes:
    entries = b"".join(bytes([len(p)]) + p for p in protos)
    return ext(16, struct.pack("!H", len(entries)) + entries)


def versions_ext(*versions: int) -> bytes:
    body = b"".join(struct.pack("!H", v) for v in versions)
    return ext(43, bytes([len(body)]) + body)


def hello_message(extensions: bytes | None = b"", session_id: bytes = b"\x11" * 32, suites: int = 3) -> bytes:
    body = b"\x03\x03" + b"\x22" * 32 + bytes([len(session_id)]) + session_id
    body += struct.pack("!H", 2 * suites) + b"\x13\x01" * suites + b"\x01\x00"
    if extensions is not None:
        body += struct.pack("!H", len(extensions)) + extensions
    return b"\x01" + len(body).to_bytes(3, "big") + body


def records(message: bytes, fragment: int = 16384, version: bytes = b"\x03\x01") -> bytes:
    out = b""
    for i in range(0, len(message), fragment):
        part = message[i : i + fragment]
        out += b"\x16" + version + struct.pack("!H", len(part)) + part
    return out


# -- real hellos -----------------------------------------------------------------------------


def test_python_ssl_hello(real_hello):
    hello = parse_client_hello(real_hello)
    assert hello == ClientHello(
        sni="example.com",
        alpn=("h2", "http/1.1"),
        legacy_version=0x0303,
        supported_versions=hello.supported_versions,
        cipher_suites_count=hello.cipher_suites_count,
    )
    assert 0x0304 in hello.supported_versions and 0x0303 in hello.supported_versions
    assert hello.version_str == "TLSv1.3"
    assert hello.cipher_suites_count > 3
    assert needed_bytes(real_hello) == len(real_hello)


def test_sni_lowercased_and_idna_as_sent():
    assert parse_client_hello(capture_hello("WWW.Example.COM")).sni == "www.example.com"
    a_label = "bücher.example".encode("idna").decode("ascii")
    assert parse_client_hello(capture_hello(a_label)).sni == "xn--bcher-kva.example"


def test_no_sni_no_alpn():
    hello = parse_client_hello(capture_hello(None, alpn=()))
    assert hello.sni is None and hello.alpn == ()


def test_tls12_only_client():
    hello = parse_client_hello(capture_hello(max_tls=ssl.TLSVersion.TLSv1_2))
    assert hello.supported_versions == ()
    assert hello.version_str == "TLSv1.2"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl binary")
def test_openssl_s_client_hello():
    with socket.socket() as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        port = lst.getsockname()[1]
        proc = subprocess.Popen(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "api.example.org",
             "-alpn", "h2,http/1.1"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            lst.settimeout(2)
            conn, _ = lst.accept()
            conn.settimeout(2)
            data = b""
            with conn:
                while not complete(data):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        finally:
            proc.kill()
            proc.wait()
    hello = parse_client_hello(data)
    assert hello.sni == "api.example.org"
    assert hello.alpn == ("h2", "http/1.1")
    assert hello.version_str == "TLSv1.3"


def test_every_prefix_is_incomplete(real_hello):
    for i in range(len(real_hello)):
        assert parse_client_hello(real_hello[:i]) is None
        assert needed_bytes(real_hello[:i]) > i
        assert not complete(real_hello[:i])


def test_needed_bytes_grows_with_headers(real_hello):
    assert needed_bytes(b"") == 5
    assert needed_bytes(real_hello[:3]) == 5
    assert needed_bytes(real_hello[:5]) == len(real_hello)


def test_trailing_bytes_after_the_hello_ignored(real_hello):
    assert parse_client_hello(real_hello + b"\x14\x03\x03\x00\x01\x01") == parse_client_hello(real_hello)


@pytest.mark.parametrize("fragment", [1, 3, 4, 5, 100, 333])
def test_fragmented_real_hello_reassembled(real_hello, fragment):
    message = real_hello[5:]
    data = records(message, fragment)
    assert parse_client_hello(data) == parse_client_hello(real_hello)
    assert needed_bytes(data) == len(data)
    for cut in (len(data) - 1, len(data) // 2, 7):
        assert parse_client_hello(data[:cut]) is None
        assert needed_bytes(data[:cut]) > cut


# -- synthetic shapes ------------------------------------------------------------------------


def test_large_hello_over_several_records():
    padding = ext(21, b"\x00" * 40000)
    msg = hello_message(sni_ext(b"big.example") + alpn_ext(b"h2") + versions_ext(0x0304) + padding)
    data = records(msg)
    assert len(data) > 2 * 16384
    assert needed_bytes(data[:5]) == 5 + 16384
    # Once the message length is known, the estimate is the least the rest can take.
    assert needed_bytes(data[: 5 + 16384]) == 5 + 16384 + 5 + len(msg) - 16384
    for cut in range(0, len(data), 997):
        assert cut < needed_bytes(data[:cut]) <= len(data)
    hello = parse_client_hello(data)
    assert hello.sni == "big.example" and hello.alpn == ("h2",)


def test_hello_over_the_cap_rejected():
    huge = b"\x01" + (70000).to_bytes(3, "big") + b"\x00" * 70000
    data = records(huge)[: MAX_HELLO_BYTES + 100]
    with pytest.raises(ClientHelloError):
        parse_client_hello(data)
    assert complete(data)
    # Under the cap as a message, but tiny records push the bytes spanned past it.
    msg = hello_message(ext(21, b"\x00" * 64000))
    assert len(msg) < MAX_HELLO_BYTES
    data = records(msg, fragment=100)
    with pytest.raises(ClientHelloError):
        parse_client_hello(data)


def test_grease_versions_skipped():
    msg = hello_message(versions_ext(0x7A7A, 0x0304, 0x0303))
    hello = parse_client_hello(records(msg))
    assert hello.supported_versions == (0x0304, 0x0303)
    assert hello.version_str == "TLSv1.3"


def test_no_extensions_at_all():
    hello = parse_client_hello(records(hello_message(None, session_id=b"")))
    assert hello == ClientHello(None, (), 0x0303, (), 3)


def test_first_host_name_wins():
    hello = parse_client_hello(records(hello_message(sni_ext(b"A.example", b"b.example"))))
    assert hello.sni == "a.example"


def test_unknown_version_named_in_hex():
    assert ClientHello(None, (), 0x0303, (0x7F1C,), 1).version_str == "0x7f1c"
    assert ClientHello(None, (), 0x0301, (), 1).version_str == "TLSv1"


@pytest.mark.parametrize(
    "data",
    [
        b"\x17\x03\x03\x00\x05hello",  # application data record
        b"\x16\x02\x00\x00\x05hello",  # bad record version
        b"\x16\x03\x01\x00\x00",  # empty record
        b"\x16\x03\x01\x40\x01" + b"\x00" * 16385,  # record over 2^14
        records(b"\x02\x00\x00\x01\x00"),  # ServerHello
        records(hello_message(sni_ext(b"a.example") + sni_ext(b"b.example"))),  # duplicate ext
        records(hello_message(sni_ext(b"bad host"))),
        records(hello_message(sni_ext("bü".encode()))),
        records(hello_message(sni_ext(b""))),
        records(hello_message(alpn_ext(b""))),
        records(hello_message(ext(16, b"\x00\x05\x02h2"))),  # ALPN list longer than the ext
        records(hello_message(ext(16, b"\x00\x03\x02h2\x00"))),  # trailing garbage in ALPN
        records(hello_message(ext(43, b"\x03\x03\x04\x03"))),  # odd versions length
        records(hello_message(ext(0, b"\x00\x05\x00\x00\x09abc"))),  # name overruns its list
        records(hello_message(b"\x00\x00\x00\x10\x00")),  # extension overruns the block
        records(hello_message(b"\x00")),  # half an extension header
        records(hello_message(session_id=b"\x00" * 33)),
        records(hello_message(suites=0)),
        records(b"\x01\x00\x00\x10" + b"\x03\x03" + b"\x00" * 14),  # body shorter than random
    ],
)
def test_malformed_rejected(data):
    with pytest.raises(ClientHelloError):
        parse_client_hello(data)
    assert complete(data)  # nothing worth waiting for


def test_extensions_length_mismatch():
    msg = bytearray(hello_message(alpn_ext(b"h2")))
    ext_len_at = len(msg) - len(alpn_ext(b"h2")) - 2
    msg[ext_len_at + 1] += 1
    with pytest.raises(ClientHelloError):
        parse_client_hello(records(bytes(msg)))


def test_interleaved_non_handshake_record(real_hello):
    data = records(real_hello[5:], 100)
    data = data[:105] + b"\x15\x03\x03\x00\x02\x02\x28" + data[105:]
    with pytest.raises(ClientHelloError):
        parse_client_hello(data)


# -- fuzzing ---------------------------------------------------------------------------------


def check_total(data: bytes) -> None:
    """Only None, a ClientHello or ClientHelloError; needed_bytes always an int."""
    try:
        result = parse_client_hello(data)
    except ClientHelloError:
        result = None
    assert result is None or isinstance(result, ClientHello)
    n = needed_bytes(data)
    assert isinstance(n, int) and 0 < n <= MAX_HELLO_BYTES + 5


def mutate(rng: random.Random, raw: bytes) -> bytes:
    out = bytearray(raw)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out[: rng.randint(0, len(out))]) if rng.random() < 0.3 else bytes(out)


def test_seeded_mutations_of_real_hello(real_hello):
    """Dependency-free fuzzing: a few thousand seeded mutations and random framed bodies."""
    rng = random.Random(1234)
    for _ in range(3000):
        check_total(mutate(rng, real_hello))
    for _ in range(1000):
        body = rng.randbytes(rng.randint(0, 300))
        check_total(records(b"\x01" + len(body).to_bytes(3, "big") + body))


try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # the seeded fuzz above still runs
    pass
else:
    FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

    @FUZZ
    @given(st.binary(max_size=2048))
    def test_fuzz_arbitrary_bytes(data):
        check_total(data)

    @FUZZ
    @given(st.binary(max_size=600))
    def test_fuzz_well_framed_bodies(body):
        """Random bodies inside correct record and handshake headers reach the body parser."""
        check_total(records(b"\x01" + len(body).to_bytes(3, "big") + body))

    @FUZZ
    @given(st.data())
    def test_fuzz_mutated_real_hello(real_hello, data):
        raw = bytearray(real_hello)
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(raw)))
        check_total(bytes(raw))
        check_total(bytes(raw[:cut]))
