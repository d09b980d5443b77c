"""ACME state on disk under ``$VANE_STATE_DIR/acme/`` (DESIGN.md §2): one account key per CA
directory and one certificate, key and description per name set. Directories are 0700 and
every file 0600 (keys are secrets); files are replaced atomically, so a reader sees the old
certificate or the new one, never half of one."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["AcmeStore", "StoredCert"]

MAX_FILE = 1 << 20


class StoredCert:
    """A certificate on disk: its paths, its description and when it was issued from where."""

    def __init__(self, cert_path: str, key_path: str, meta: dict[str, Any], leaf: x509.Certificate) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self.meta = meta
        self.leaf = leaf

    @property
    def not_before(self) -> float:
        return self.leaf.not_valid_before_utc.timestamp()

    @property
    def not_after(self) -> float:
        return self.leaf.not_valid_after_utc.timestamp()

    @property
    def serial(self) -> str:
        return format(self.leaf.serial_number, "x")


def _write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(MAX_FILE)


def set_id(names: tuple[str, ...]) -> str:
    """A file-system name for a name set: the first name (readable) and a digest of them all."""
    digest = hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:16]
    return f"{names[0]}-{digest}"


class AcmeStore:
    """Owns ``<state_dir>/acme``: ``accounts/<directory digest>/`` and ``certs/<name set>/``."""

    def __init__(self, state_dir: str) -> None:
        self.root = os.path.join(state_dir, "acme")

    def _dir(self, *parts: str) -> str:
        path = self.root
        for part in ("",) + parts:  # each level 0700 (makedirs gives intermediate ones the umask's mode)
            path = os.path.join(path, part) if part else path
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                pass
        return path

    # -- the account ---------------------------------------------------------------------------

    def account_key(self, directory: str) -> tuple[ec.EllipticCurvePrivateKey, dict[str, Any]]:
        """The account key for ``directory`` (created once, P-256) and what is known of the account."""
        where = self._dir("accounts", hashlib.sha256(directory.encode()).hexdigest()[:16])
        key_path = os.path.join(where, "key.pem")
        try:
            key = serialization.load_pem_private_key(_read(key_path), password=None)
        except FileNotFoundError:
            key = ec.generate_private_key(ec.SECP256R1())
            _write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        try:
            meta = json.loads(_read(os.path.join(where, "account.json")))
        except (FileNotFoundError, ValueError):
            meta = {}
        return key, meta  # type: ignore[return-value]

    def save_account(self, directory: str, meta: dict[str, Any]) -> None:
        where = self._dir("accounts", hashlib.sha256(directory.encode()).hexdigest()[:16])
        _write(os.path.join(where, "account.json"), json.dumps(meta, sort_keys=True).encode())

    # -- certificates --------------------------------------------------------------------------

    def load(self, names: tuple[str, ...]) -> StoredCert | None:
        """The stored certificate for exactly ``names``, or None (absent or unreadable)."""
        where = os.path.join(self.root, "certs", set_id(names))
        cert_path, key_path = os.path.join(where, "cert.pem"), os.path.join(where, "key.pem")
        try:
            meta = json.loads(_read(os.path.join(where, "meta.json")))
            leaf = x509.load_pem_x509_certificates(_read(cert_path))[0]
            os.stat(key_path)
        except (OSError, ValueError, IndexError):
            return None
        if sorted(meta.get("names") or ()) != sorted(names):
            return None
        return StoredCert(cert_path, key_path, meta, leaf)

    def save(self, names: tuple[str, ...], fullchain_pem: bytes, key_pem: bytes, directory: str) -> StoredCert:
        where = self._dir("certs", set_id(names))
        cert_path, key_path = os.path.join(where, "cert.pem"), os.path.join(where, "key.pem")
        leaf = x509.load_pem_x509_certificates(fullchain_pem)[0]
        meta = {"names": list(names), "directory": directory,
                "issuer": leaf.issuer.rfc4514_string(), "serial": format(leaf.serial_number, "x")}
        _write(key_path, key_pem)        # the key first: a reader pairing the new cert finds it
        _write(cert_path, fullchain_pem)
        _write(os.path.join(where, "meta.json"), json.dumps(meta, sort_keys=True).encode())
        return StoredCert(cert_path, key_path, meta, leaf)
