"""Automatic certificates against a real ACME CA (pebble): issuance over HTTP-01 and
TLS-ALPN-01, serving, restart without re-issuing, renewal swapped under a live connection,
and the failure paths (fallback certificate, the error in ``vane get certs``)."""

from __future__ import annotations

import json
import socket
import ssl
import time
from pathlib import Path

import httpx
import pytest

from tests.support.daemon import new_lab
from tests.support.net import curl, free_ports, wait_until
from tests.support.pebble import Pebble, require_pebble

NAMES = ("a.test", "b.test")


@pytest.fixture
def lab():
    require_pebble()
    yield from new_lab()


def acme_rules(http_port: int, tls_port: int) -> dict:
    rules = {"00-plain.json": {"rule": "plain", "listen": f"127.0.0.1:{http_port}",
                               "flow": {"respond": {"input": {"body": "plain\n"}}}}}
    for name in NAMES:
        rules[f"10-{name}.json"] = {"rule": name.split(".")[0], "listen": f"127.0.0.1:{tls_port}",
                                    "match": {"req.host": name}, "tls": {"acme": True},
                                    "flow": {"respond": {"input": {"body": f"hello from {name}\n"}}}}
    return rules


def write_config(lab, pebble: Pebble | None, challenges: list[str], directory: str | None = None, **extra) -> None:
    acme = {"email": "ops@example.com", "challenges": challenges,
            "directory": directory or pebble.directory, **extra}
    if pebble is not None:
        acme["ca_bundle"] = str(pebble.ca_bundle)
    (lab.conf / "config.json").write_text(json.dumps({"acme": acme}))


def certs_by_name(d) -> dict[str, dict]:
    return {c["names"][0]: c for c in d.mgmt("get_certs")["certs"] if c.get("source") == "acme"}


def wait_issued(d, names=NAMES, timeout: float = 60.0) -> dict[str, dict]:
    def done():
        got = certs_by_name(d)
        return got if all(got.get(n, {}).get("state") == "valid" for n in names) else None
    got = wait_until(done, timeout=timeout, interval=0.2)
    assert got, (certs_by_name(d), d.stderr[-3000:])
    return got


def served_serial(port: int, name: str, root: Path | None = None) -> str:
    """The serial of the certificate a new handshake for ``name`` gets (hex)."""
    ctx = ssl.create_default_context(cafile=str(root)) if root else ssl._create_unverified_context()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=name) as tls:
        from cryptography import x509
        return format(x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number, "x")


@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01"])
def test_two_names_issued_and_served(lab, challenge):
    http_port, tls_port = free_ports(2)
    pebble = Pebble(lab.base / "pebble", http_port, tls_port)
    lab.on_close(pebble.close)
    root = lab.base / "root.pem"
    root.write_text(pebble.root_pem())
    write_config(lab, pebble, [challenge])
    started = time.monotonic()
    d = lab.vaned(acme_rules(http_port, tls_port))
    got = wait_issued(d)
    print(f"{challenge}: both certificates in {time.monotonic() - started:.1f}s")
    for name in NAMES:
        assert got[name]["fallback"] is False and got[name]["last_error"] is None
        assert "Pebble" in got[name]["issuer"]
        with httpx.Client(verify=ssl.create_default_context(cafile=str(root))) as client:
            r = client.get(f"https://127.0.0.1:{tls_port}/", extensions={"sni_hostname": name},
                           headers={"host": name})
        assert r.status_code == 200 and r.text == f"hello from {name}\n"
        r = curl("-sS", "--cacert", str(root), "--resolve", f"{name}:{tls_port}:127.0.0.1",
                 f"https://{name}:{tls_port}/")
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"hello from {name}\n".encode()
        assert served_serial(tls_port, name, root) == got[name]["serial"]
    assert d.count(r"ACME certificate for a\.test issued") == 1
