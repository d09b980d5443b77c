"""A real ACME CA for tests: Debian's ``pebble``, with ``pebble-challtestsrv`` as its DNS server
(every name resolves to 127.0.0.1), validating HTTP-01 and TLS-ALPN-01 on the ports a test
gives it. ``Pebble.root_pem()`` is the root that signs the certificates it issues (fetched from
its management interface); ``ca_bundle`` trusts pebble's own API certificate."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import urllib.request
from pathlib import Path

import pytest
import trustme

from .net import accepts, free_ports, wait_until

PEBBLE = shutil.which("pebble")
CHALLTESTSRV = shutil.which("pebble-challtestsrv")


def require_pebble() -> None:
    """Skip without pebble, unless under CI (where a missing pebble is a failure)."""
    if PEBBLE and CHALLTESTSRV:
        return
    if os.environ.get("CI") == "true":
        pytest.fail("pebble is not installed (apt-get install pebble); CI must run the ACME tests")
    pytest.skip("pebble is not installed (apt-get install pebble)")


class Pebble:
    """One pebble and its DNS server, owned by the test; ``close`` stops both."""

    def __init__(self, base: Path, http_port: int, tls_port: int, validity_secs: int | None = None,
                 env: dict[str, str] | None = None, api_port: int | None = None,
                 eab_keys: dict[str, str] | None = None) -> None:
        """``eab_keys``: external account binding required, with these key ids and their
        base64url HMAC keys."""
        require_pebble()
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.api_port, self.mgmt_port, dns_port, dns_mgmt = free_ports(4)
        if api_port is not None:
            self.api_port = api_port
        ca = trustme.CA()
        issued = ca.issue_cert("localhost", "127.0.0.1")
        cert, key, self.ca_bundle = base / "pebble.pem", base / "pebble.key", base / "pebble-ca.pem"
        issued.cert_chain_pems[0].write_to_path(str(cert))
        issued.private_key_pem.write_to_path(str(key))
        ca.cert_pem.write_to_path(str(self.ca_bundle))
        config = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.api_port}", "managementListenAddress": f"127.0.0.1:{self.mgmt_port}",
            "certificate": str(cert), "privateKey": str(key), "httpPort": http_port, "tlsPort": tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": bool(eab_keys),
            "externalAccountMACKeys": eab_keys or {}}}
        if validity_secs is not None:
            config["pebble"]["certificateValidityPeriod"] = validity_secs
        (base / "pebble.json").write_text(json.dumps(config))
        self.directory = f"https://localhost:{self.api_port}/dir"
        self._logs = [open(base / "challtestsrv.log", "wb"), open(base / "pebble.log", "wb")]
        self.dns = subprocess.Popen(
            [CHALLTESTSRV, "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "", "-dns01", f"127.0.0.1:{dns_port}",
             "-http01", "", "-https01", "", "-tlsalpn01", "", "-management", f"127.0.0.1:{dns_mgmt}"],
            stdout=self._logs[0], stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.proc = subprocess.Popen(
            [PEBBLE, "-config", str(base / "pebble.json"), "-dnsserver", f"127.0.0.1:{dns_port}"],
            stdout=self._logs[1], stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", **(env or {})})
        if not wait_until(lambda: accepts(self.api_port) and accepts(self.mgmt_port), timeout=15):
            self.close()
            raise RuntimeError(f"pebble did not start: {self.log()}")

    def log(self) -> str:
        return (self.base / "pebble.log").read_text(errors="replace")

    def root_pem(self) -> str:
        """The root certificate of what pebble issues (management endpoint ``/roots/0``)."""
        ctx = ssl.create_default_context(cafile=str(self.ca_bundle))
        with urllib.request.urlopen(f"https://localhost:{self.mgmt_port}/roots/0", context=ctx, timeout=10) as r:
            return r.read().decode()

    def close(self) -> None:
        for proc in (self.proc, self.dns):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for f in self._logs:
            f.close()
