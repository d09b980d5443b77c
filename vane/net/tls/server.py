"""Server-side TLS termination on pyOpenSSL over gevent sockets (DESIGN.md §3 ``tls``, §6 ``upgrade``).

``ServerTLS`` holds the contexts for one listener's certificates, picks a certificate by SNI
and a protocol by ALPN, and turns an accepted socket into a ``TLSStream``.

Session-ticket keys live inside an OpenSSL ``SSL_CTX`` and pyOpenSSL binds no call to set
them, so the contexts themselves are daemon-scoped: a ``ContextCache`` keyed by the
certificate and key contents hands a reload the very context (and so the ticket keys and the
session cache) that the previous configuration used, and clients resume their sessions
across reloads. Everything a context needs per listener (the SNI map, the ALPN preference)
is looked up through the connection's app data, so one cached context serves any number of
``ServerTLS`` objects.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections import OrderedDict
from typing import Any, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID, NameOID
from gevent import get_hub
from gevent.socket import wait as wait_watcher
from gevent.socket import wait_read, wait_write
from OpenSSL import SSL

from vane.config.files import MAX_CERT_BYTES, read_regular

__all__ = [
    "TLSConfigError", "TLSError", "TLSHandshakeError", "TLSHandshakeTimeout",
    "ContextCache", "ServerTLS", "TLSStream",
]

# TLS 1.2 suites: forward secrecy and AEAD only (TLS 1.3 suites are all of that kind).
CIPHERS_TLS12 = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
_SESSION_ID_CONTEXT = b"vaned"
_SEND_CHUNK = 1 << 20
_READ_EVENT = 1
_WRITE_EVENT = 2


class TLSConfigError(Exception):
    """A certificate or key could not be loaded; names the offending file."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class TLSError(OSError):
    """A TLS protocol failure on an established stream."""


class TLSHandshakeError(TLSError):
    """The TLS handshake failed (protocol version, cipher, malformed hello, peer gone)."""


class TLSHandshakeTimeout(TLSHandshakeError, TimeoutError):
    """The client did not finish the handshake within the handshake timeout."""


def _timeout() -> socket.timeout:
    return socket.timeout("timed out")


# ---------------------------------------------------------------------------------------------
# Certificates and contexts

class CertContext:
    """One loaded certificate: its pyOpenSSL context, the names it serves and its description."""

    __slots__ = ("context", "exact", "wildcards", "info")

    def __init__(self, context: SSL.Context, exact: frozenset[str], wildcards: frozenset[str],
                 info: dict[str, Any]) -> None:
        self.context = context
        self.exact = exact          # "a.example.com"
        self.wildcards = wildcards  # "example.com" for "*.example.com"
        self.info = info

    def matches(self, name: str) -> bool:
        if name in self.exact:
            return True
        dot = name.find(".")
        return dot > 0 and name[dot + 1:] in self.wildcards


def _read(path: str) -> bytes:
    """A certificate or key file: a regular file of at most MAX_CERT_BYTES (never a FIFO or a device)."""
    try:
        return read_regular(path, MAX_CERT_BYTES)
    except OSError as exc:
        raise TLSConfigError(path, exc.strerror or str(exc)) from None


def _names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
        names = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    if not names:  # CN fallback, only for certificates without DNS SANs
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return [n.lower().rstrip(".") for n in names]


def _describe(cert: x509.Certificate, cert_path: str, key_path: str, names: list[str]) -> dict[str, Any]:
    return {
        "path": cert_path,
        "key_path": key_path,
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "sans": names,
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "serial": format(cert.serial_number, "x"),
        "sha256": hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
    }


def _alpn_select(conn: SSL.Connection, offered: list[bytes]) -> bytes | object:
    """Pick the first of the server's protocols that the client offered."""
    owner = conn.get_app_data()
    for proto in owner.alpn_wire if owner is not None else ():
        if proto in offered:
            return proto
    return SSL.NO_OVERLAPPING_PROTOCOLS


def _servername(conn: SSL.Connection) -> None:
    """Switch the connection to the context whose certificate names match the SNI."""
    owner = conn.get_app_data()
    name = conn.get_servername()
    if owner is None or not name:
        return
    ctx = owner.context_for(name.decode("ascii", "replace").lower().rstrip("."))
    if ctx is not conn.get_context():
        conn.set_context(ctx)


def _build_context(cert_pem: bytes, key_pem: bytes, cert_path: str, key_path: str) -> CertContext:
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as exc:
        raise TLSConfigError(cert_path, f"no PEM certificate could be read ({exc})") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise TLSConfigError(key_path, "the private key is encrypted; vaned needs it unencrypted") from None
    except Exception as exc:  # ValueError, UnsupportedAlgorithm
        raise TLSConfigError(key_path, f"no PEM private key could be read ({exc})") from None

    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_IGNORE_UNEXPECTED_EOF)
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    ctx.set_cipher_list(CIPHERS_TLS12)
    ctx.set_session_id(_SESSION_ID_CONTEXT)
    try:
        ctx.use_certificate(chain[0])
        for extra in chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(key)  # type: ignore[arg-type]
        ctx.check_privatekey()
    except (SSL.Error, TypeError, ValueError) as exc:
        raise TLSConfigError(key_path, f"the key does not fit the certificate {cert_path} ({exc})") from None
    ctx.set_tlsext_servername_callback(_servername)
    ctx.set_alpn_select_callback(_alpn_select)  # type: ignore[arg-type]

    names = _names(chain[0])
    exact = frozenset(n for n in names if not n.startswith("*."))
    wildcards = frozenset(n[2:] for n in names if n.startswith("*."))
    return CertContext(ctx, exact, wildcards, _describe(chain[0], cert_path, key_path, names))


class ContextCache:
    """Daemon-scoped store of loaded contexts, so their ticket keys survive config reloads.

    The key is the certificate and key paths plus a hash of both files' contents: a reload
    with unchanged files reuses the context, a renewed certificate gets a fresh one.
    Least recently used entries beyond ``max_entries`` are dropped (contexts still referenced
    by a live ``ServerTLS`` stay alive through that reference).
    """

    def __init__(self, max_entries: int = 256) -> None:
        self._entries: OrderedDict[tuple[str, str, bytes], CertContext] = OrderedDict()
        self._max = max_entries

    def load(self, cert_path: str, key_path: str) -> CertContext:
        cert_path = os.path.abspath(cert_path)
        key_path = os.path.abspath(key_path or cert_path)
        cert_pem = _read(cert_path)
        key_pem = cert_pem if key_path == cert_path else _read(key_path)
        digest = hashlib.sha256(cert_pem + b"\0" + key_pem).digest()
        key = (cert_path, key_path, digest)
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            return entry
        entry = _build_context(cert_pem, key_pem, cert_path, key_path)
        self._entries[key] = entry
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return entry

    def __len__(self) -> int:
        return len(self._entries)


# ---------------------------------------------------------------------------------------------
# Listener TLS

class ServerTLS:
    """TLS termination for one listener: the certificates of its rules, the first the default."""

    def __init__(self, certs: Sequence[tuple[str, str]], alpn: Sequence[str] = ("h2", "http/1.1"),
                 cache: ContextCache | None = None, handshake_timeout: float = 10.0) -> None:
        if not certs:
            raise ValueError("ServerTLS needs at least one certificate")
        cache = cache if cache is not None else ContextCache()
        self._certs: list[CertContext] = [cache.load(c, k) for c, k in certs]
        self.alpn = tuple(alpn)
        self.alpn_wire = tuple(p.encode("ascii") for p in alpn)
        self.handshake_timeout = handshake_timeout
        self._default = self._certs[0].context
        self._by_name: dict[str, SSL.Context] = {}

    def context_for(self, name: str) -> SSL.Context:
        """The context whose certificate serves ``name`` (lower-case); the default otherwise."""
        ctx = self._by_name.get(name)
        if ctx is None:
            ctx = self._default
            for entry in self._certs:
                if entry.matches(name):
                    ctx = entry.context
                    break
            if len(self._by_name) < 1024:  # SNI values are client-chosen: bound the memo
                self._by_name[name] = ctx
        return ctx

    def certs_info(self) -> list[dict[str, Any]]:
        """Subject, SANs, validity and path of each certificate, default first."""
        return [dict(entry.info, default=(i == 0)) for i, entry in enumerate(self._certs)]

    def accept(self, sock: socket.socket) -> "TLSStream":
        """Run the server handshake on an accepted gevent socket; bytes peeked earlier are still queued.

        Raises ``TLSHandshakeTimeout`` or ``TLSHandshakeError`` after closing the socket.
        """
        conn = SSL.Connection(self._default, sock)
        conn.set_app_data(self)
        conn.set_accept_state()
        stream = TLSStream(sock, conn)
        deadline = time.monotonic() + self.handshake_timeout
        try:
            while True:
                try:
                    conn.do_handshake()
                    break
                except SSL.WantReadError:
                    stream._wait(_READ_EVENT, deadline, TLSHandshakeTimeout("TLS handshake timed out"))
                except SSL.WantWriteError:
                    stream._wait(_WRITE_EVENT, deadline, TLSHandshakeTimeout("TLS handshake timed out"))
        except SSL.SysCallError as exc:
            stream._release()
            code, text = exc.args[0], exc.args[1] if len(exc.args) > 1 else ""
            raise TLSHandshakeError(f"peer closed during the TLS handshake ({text or code})") from None
        except SSL.Error as exc:
            stream._release()
            raise TLSHandshakeError(f"TLS handshake failed: {_ssl_reason(exc)}") from None
        except BaseException:
            stream._release()
            raise
        conn.set_app_data(None)  # the callbacks are done; drop the reference cycle
        stream._negotiated()
        return stream


def _ssl_reason(exc: SSL.Error) -> str:
    try:
        errors = exc.args[0]
        return "; ".join(str(e[2]) for e in errors) or str(exc)
    except (IndexError, TypeError):
        return str(exc)


# ---------------------------------------------------------------------------------------------
# The decrypted stream

class TLSStream:
    """A stream (recv/recv_into/sendall/shutdown_write/close) over an established TLS connection.

    Reads and writes may run in two greenlets at once (one each). OpenSSL returns "want read"
    only when no decrypted record is buffered, so a read always tries ``SSL_read`` before it
    waits on the socket. ``settimeout`` bounds every wait; a read times out per call, a write
    for the whole ``sendall``.
    """

    __slots__ = ("_sock", "_conn", "_fd", "_timeout", "_rw", "_ww", "_closed", "_writing",
                 "version", "cipher", "alpn", "sni")

    def __init__(self, sock: socket.socket, conn: SSL.Connection) -> None:
        self._sock = sock
        self._conn = conn
        self._fd = sock.fileno()
        self._timeout: float | None = sock.gettimeout()
        loop = get_hub().loop
        self._rw: Any = loop.io(self._fd, _READ_EVENT)
        self._ww: Any = loop.io(self._fd, _WRITE_EVENT)
        self._closed = False
        self._writing = False
        self.version = ""
        self.cipher = ""
        self.alpn = ""
        self.sni = ""

    def _negotiated(self) -> None:
        conn = self._conn
        self.version = conn.get_protocol_version_name() or ""
        self.cipher = conn.get_cipher_name() or ""
        proto = conn.get_alpn_proto_negotiated()
        self.alpn = proto.decode("ascii", "replace") if proto else ""
        name = conn.get_servername()
        self.sni = name.decode("ascii", "replace").lower() if name else ""

    # -- waiting ------------------------------------------------------------------------------

    def _wait(self, event: int, deadline: float | None, exc: BaseException | None = None) -> None:
        if self._closed:
            raise OSError(9, "TLS stream closed")
        timeout = None
        if deadline is not None:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                raise exc if exc is not None else _timeout()
        watcher = self._rw if event == _READ_EVENT else self._ww
        if watcher.callback is not None:
            # The other direction's greenlet is waiting on this watcher (rare: a read that
            # needs a write, or the reverse); use a one-off watcher instead.
            waiter = wait_read if event == _READ_EVENT else wait_write
            waiter(self._fd, timeout, exc if exc is not None else _timeout())
            return
        wait_watcher(watcher, timeout, exc if exc is not None else _timeout())

    def _deadline(self) -> float | None:
        return None if self._timeout is None else time.monotonic() + self._timeout

    # -- stream interface ---------------------------------------------------------------------

    def recv(self, n: int) -> bytes:
        """Up to ``n`` decrypted bytes; ``b""`` at EOF (close_notify or TCP close)."""
        deadline = self._deadline()
        conn = self._conn
        while True:
            try:
                return conn.recv(n)
            except SSL.WantReadError:
                self._wait(_READ_EVENT, deadline)
            except SSL.WantWriteError:
                self._wait(_WRITE_EVENT, deadline)
            except SSL.ZeroReturnError:
                return b""
            except SSL.SysCallError as exc:
                if exc.args[0] == -1:
                    return b""
                raise OSError(exc.args[0], exc.args[1]) from None
            except SSL.Error as exc:
                if self._closed:
                    raise OSError(9, "TLS stream closed") from None
                raise TLSError(f"TLS read failed: {_ssl_reason(exc)}") from None

    def recv_into(self, buf: Any, nbytes: int = 0) -> int:
        """Read into ``buf``; returns the count, 0 at EOF."""
        deadline = self._deadline()
        conn = self._conn
        size = nbytes or len(buf)
        while True:
            try:
                return conn.recv_into(buf, size)
            except SSL.WantReadError:
                self._wait(_READ_EVENT, deadline)
            except SSL.WantWriteError:
                self._wait(_WRITE_EVENT, deadline)
            except SSL.ZeroReturnError:
                return 0
            except SSL.SysCallError as exc:
                if exc.args[0] == -1:
                    return 0
                raise OSError(exc.args[0], exc.args[1]) from None
            except SSL.Error as exc:
                if self._closed:
                    raise OSError(9, "TLS stream closed") from None
                raise TLSError(f"TLS read failed: {_ssl_reason(exc)}") from None

    def sendall(self, data: Any) -> None:
        """Encrypt and send all of ``data``, waiting for the socket as needed."""
        view = memoryview(data)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        total = len(view)
        sent = 0
        deadline = self._deadline()
        conn = self._conn
        self._writing = True
        try:
            while sent < total:
                try:
                    sent += conn.send(view[sent:sent + _SEND_CHUNK])
                except SSL.WantWriteError:
                    self._wait(_WRITE_EVENT, deadline)
                except SSL.WantReadError:
                    self._wait(_READ_EVENT, deadline)
                except SSL.SysCallError as exc:
                    if exc.args[0] == -1:
                        raise BrokenPipeError(32, "TLS peer closed the connection") from None
                    raise OSError(exc.args[0], exc.args[1]) from None
                except SSL.Error as exc:
                    if self._closed:
                        raise OSError(9, "TLS stream closed") from None
                    raise TLSError(f"TLS write failed: {_ssl_reason(exc)}") from None
        finally:
            self._writing = False

    def shutdown_write(self) -> None:
        """Half-close: send close_notify, then FIN; reading stays possible."""
        deadline = self._deadline()
        try:
            for _ in range(8):
                try:
                    self._conn.shutdown()
                    break
                except SSL.WantWriteError:
                    self._wait(_WRITE_EVENT, deadline)
                except SSL.WantReadError:
                    self._wait(_READ_EVENT, deadline)
        except (SSL.Error, OSError):
            pass
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        """Send close_notify if that cannot block, wake any waiting greenlet, close the socket."""
        if self._closed:
            return
        if not self._writing and not (self._conn.get_shutdown() & SSL.SENT_SHUTDOWN):
            try:
                self._conn.shutdown()
            except (SSL.Error, OSError):
                pass
        self._release()

    def pending(self) -> int:
        """Decrypted bytes buffered inside the TLS object (invisible to a read watcher)."""
        return self._conn.pending()

    def abort(self) -> None:
        """Close without close_notify: the peer must not take a cut-off stream as complete."""
        self._release()

    def _release(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Greenlets blocked on our watchers get the error; the socket closes after they do.
        get_hub().cancel_waits_close_and_then(
            (self._rw, self._ww), OSError(9, "TLS stream closed"), self._sock.close)

    def fileno(self) -> int:
        return self._sock.fileno()

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def gettimeout(self) -> float | None:
        return self._timeout

    @property
    def socket(self) -> socket.socket:
        """The TCP socket underneath (addresses, socket options)."""
        return self._sock

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        return f"<TLSStream fd={self._fd} {self.version} alpn={self.alpn!r} sni={self.sni!r}>"
