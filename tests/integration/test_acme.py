"""Automatic certificates against a real ACME CA (pebble): issuance over HTTP-01 and
TLS-ALPN-01, serving, restart without re-issuing, renewal swapped under a live connection,
and the failure paths (fallback certificate, the error in ``vane get certs``)."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import time
from datetime import datetime
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


def write_config(lab, pebble: Pebble | None, challenges: list[str], http_port: int, directory: str | None = None,
                 **extra) -> None:
    acme = {"email": "ops@example.com", "challenges": challenges, "http_port": http_port,
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
    if not got:
        pytest.fail(f"not issued: {json.dumps(certs_by_name(d), indent=1)}\n{d.stderr[-3000:]}")
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
    write_config(lab, pebble, [challenge], http_port)
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


def start(lab, challenges=("http-01",), validity_secs=None, eab_keys=None, **acme):
    http_port, tls_port = free_ports(2)
    pebble = Pebble(lab.base / "pebble", http_port, tls_port, validity_secs=validity_secs, eab_keys=eab_keys)
    lab.on_close(pebble.close)
    root = lab.base / "root.pem"
    root.write_text(pebble.root_pem())
    write_config(lab, pebble, list(challenges), http_port, **acme)
    return pebble, root, http_port, tls_port


def test_restart_serves_the_stored_certificates_without_issuing(lab):
    pebble, root, http_port, tls_port = start(lab)
    d = lab.vaned(acme_rules(http_port, tls_port))
    first = wait_issued(d)
    assert d.stop() == 0
    d2 = lab.vaned()
    got = certs_by_name(d2)
    for name in NAMES:
        assert got[name]["state"] == "valid" and got[name]["serial"] == first[name]["serial"]
        assert served_serial(tls_port, name, root) == first[name]["serial"]
    time.sleep(1.0)  # the order loop has run: it found nothing due
    assert d2.count("ACME certificate for") == 0, d2.stderr
    state = lab.base / "state" / "acme"
    keys = list(state.glob("accounts/*/key.pem")) + list(state.glob("certs/*/key.pem"))
    assert len(keys) == 3 and all(k.stat().st_mode & 0o777 == 0o600 for k in keys)
    assert (state / "accounts").stat().st_mode & 0o777 == 0o700


def test_renewal_swaps_the_certificate_under_a_live_connection(lab):
    # 30 s certificates: renewed when a third of the lifetime is left, ~20 s after issuance
    pebble, root, http_port, tls_port = start(lab, validity_secs=30)
    d = lab.vaned(acme_rules(http_port, tls_port))
    old = wait_issued(d)["a.test"]["serial"]
    ctx = ssl.create_default_context(cafile=str(root))
    raw = socket.create_connection(("127.0.0.1", tls_port), timeout=5)
    conn = lab.hold(ctx.wrap_socket(raw, server_hostname="a.test"))
    request = b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"

    def ask() -> bytes:
        conn.sendall(request)
        data = b""
        while not data.endswith(b"hello from a.test\n"):
            chunk = conn.recv(65536)
            assert chunk, data
            data += chunk
        return data

    assert ask().startswith(b"HTTP/1.1 200")
    assert wait_until(lambda: served_serial(tls_port, "a.test", root) != old, timeout=40, interval=0.5)
    assert d.find(r"ACME certificate for a\.test renewed") >= 0
    assert ask().startswith(b"HTTP/1.1 200")  # the keep-alive connection goes on, on its old certificate
    from cryptography import x509
    assert format(x509.load_der_x509_certificate(conn.getpeercert(binary_form=True)).serial_number, "x") == old
    assert certs_by_name(d)["a.test"]["serial"] != old


def fallback_served(port: int, name: str) -> bool:
    """The certificate for ``name`` is the self-signed fallback (issuer = subject = the name)."""
    ctx = ssl._create_unverified_context()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=name) as tls:
        from cryptography import x509
        cert = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
    return cert.issuer == cert.subject and name in cert.subject.rfc4514_string()


def wait_error(d, name: str, pattern: str, timeout: float = 30.0) -> dict:
    def failed():
        c = certs_by_name(d).get(name) or {}
        return c if c.get("last_error") else None
    got = wait_until(failed, timeout=timeout, interval=0.2)
    assert got, (certs_by_name(d), d.stderr[-3000:])
    assert pattern in got["last_error"], got
    return got


def test_ca_unreachable_serves_the_fallback_and_retries_after_a_reload(lab):
    http_port, tls_port, api_port = free_ports(3)
    directory = f"https://localhost:{api_port}/dir"
    write_config(lab, None, ["http-01"], http_port, directory=directory)
    d = lab.vaned(acme_rules(http_port, tls_port))
    got = wait_error(d, "a.test", "cannot reach the CA")
    assert got["state"] == "error" and got["fallback"] is True and got["next_attempt"]
    assert fallback_served(tls_port, "a.test")
    assert d.find(r"ACME certificate for a\.test not issued: cannot reach the CA.*self-signed fallback") >= 0
    r = d.cli("get", "certs")
    assert r.returncode == 0 and "cannot reach the CA" in r.stdout, r
    assert "Traceback" not in d.stderr
    text = d.mgmt("get_metrics")
    text = text["text"] if isinstance(text, dict) else text
    assert _sample(text, "vane_cert_not_after_timestamp_seconds", '{names="a.test",source="fallback"}')
    # the CA comes up; a config change (here: trusting its API certificate) retries at once
    pebble = Pebble(lab.base / "pebble", http_port, tls_port, api_port=api_port)
    lab.on_close(pebble.close)
    write_config(lab, pebble, ["http-01"], http_port)
    assert d.cli("reload").returncode == 0
    got = wait_issued(d)
    assert not fallback_served(tls_port, "a.test")


def test_failed_challenge_keeps_the_fallback_and_reports_it(lab):
    http_port, tls_port, elsewhere = free_ports(3)
    pebble = Pebble(lab.base / "pebble", elsewhere, tls_port)  # validates HTTP-01 where nobody listens
    lab.on_close(pebble.close)
    write_config(lab, pebble, ["http-01"], http_port)
    d = lab.vaned(acme_rules(http_port, tls_port))
    got = wait_error(d, "a.test", "validation failed")
    assert got["fallback"] is True and got["failures"] >= 1
    assert fallback_served(tls_port, "b.test")
    r = d.cli("get", "certs")
    assert "validation failed" in r.stdout


# -- external account binding -------------------------------------------------------------------

EAB_KID = "vane-ops"
EAB_KEY = base64.urlsafe_b64encode(b"k" * 32).rstrip(b"=").decode()


def test_external_account_binding_registers_with_the_ca_key_and_issues(lab):
    pebble, root, http_port, tls_port = start(lab, eab_keys={EAB_KID: EAB_KEY},
                                              eab={"kid": EAB_KID, "hmac_key": EAB_KEY})
    d = lab.vaned(acme_rules(http_port, tls_port))
    got = wait_issued(d)
    assert served_serial(tls_port, "a.test", root) == got["a.test"]["serial"]
    assert EAB_KEY not in d.stderr and EAB_KEY not in d.cli("get", "certs").stdout  # the key is a secret


@pytest.mark.parametrize("eab, error", [
    (None, "requires external account binding: set acme.eab"),
    ({"kid": EAB_KID, "hmac_key": base64.urlsafe_b64encode(b"x" * 32).rstrip(b"=").decode()}, "CA error unauthorized"),
    ({"kid": "someone-else", "hmac_key": EAB_KEY}, "CA error unauthorized"),
])
def test_external_account_binding_missing_or_wrong_keeps_the_fallback_and_says_why(lab, eab, error):
    pebble, root, http_port, tls_port = start(lab, eab_keys={EAB_KID: EAB_KEY}, **({"eab": eab} if eab else {}))
    d = lab.vaned(acme_rules(http_port, tls_port))
    got = wait_error(d, "a.test", error)
    assert got["fallback"] is True
    assert fallback_served(tls_port, "a.test")
    assert "Traceback" not in d.stderr
    assert EAB_KEY not in d.stderr


def test_acme_tls_alpn_for_a_name_without_a_challenge_gets_the_normal_handshake(lab):
    pebble, root, http_port, tls_port = start(lab)
    d = lab.vaned(acme_rules(http_port, tls_port))
    serial = wait_issued(d)["a.test"]["serial"]
    ctx = ssl.create_default_context(cafile=str(root))
    ctx.set_alpn_protocols(["acme-tls/1"])
    with socket.create_connection(("127.0.0.1", tls_port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="a.test") as tls:
        assert tls.selected_alpn_protocol() is None
        from cryptography import x509
        assert format(x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number, "x") == serial


def test_unknown_http01_token_is_404_and_other_paths_reach_the_rules(lab):
    pebble, root, http_port, tls_port = start(lab)
    d = lab.vaned(acme_rules(http_port, tls_port))
    wait_issued(d)
    r = httpx.get(f"http://127.0.0.1:{http_port}/.well-known/acme-challenge/nope")
    assert r.status_code == 404
    r = httpx.get(f"http://127.0.0.1:{http_port}/.well-known/other")
    assert r.status_code == 200 and r.text == "plain\n"


@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01"])
def test_with_workers_the_master_issues_and_every_worker_serves(lab, challenge):
    pebble, root, http_port, tls_port = start(lab, challenges=(challenge,))
    d = lab.vaned(acme_rules(http_port, tls_port), env={"VANE_WORKERS": "2", "VANE_SEC_TLS_HANDSHAKES_PER_IP": "1000"})
    got = wait_issued(d)
    for _ in range(12):  # new connections land on both workers
        for name in NAMES:
            assert served_serial(tls_port, name, root) == got[name]["serial"]
    assert d.count(r"ACME certificate for a\.test issued") == 1
    assert d.count("ACME account registered") == 1
    # the master's metrics show when each certificate expires and when it is renewed
    text = d.mgmt("get_metrics")
    text = text["text"] if isinstance(text, dict) else text
    for name in NAMES:
        labels = f'{{names="{name}",source="acme"}}'
        expires = datetime.fromisoformat(got[name]["not_after"]).timestamp()
        renews = datetime.fromisoformat(got[name]["next_renewal"]).timestamp()
        assert _sample(text, "vane_cert_not_after_timestamp_seconds", labels) == expires
        assert _sample(text, "vane_cert_next_renewal_timestamp_seconds", labels) == renews


def _sample(text: str, name: str, labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + labels + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_without_a_rule_on_the_http01_port_vaned_listens_there_for_acme_only(lab):
    pebble, root, http_port, tls_port = start(lab)
    rules = acme_rules(http_port, tls_port)
    del rules["00-plain.json"]
    d = lab.vaned(rules)
    wait_issued(d)
    r = httpx.get(f"http://127.0.0.1:{http_port}/some/page?x=1", headers={"host": "a.test"})
    assert r.status_code == 308 and r.headers["location"] == "https://a.test/some/page?x=1"
    assert httpx.get(f"http://127.0.0.1:{http_port}/.well-known/acme-challenge/nope").status_code == 404
