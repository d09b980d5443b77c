"""Certificate paths in a hand-written ``upgrade tls`` node resolve against the config dir, as
the rules' ``tls`` paths do, wherever vaned was started from (systemd starts it in /); a
missing file is an error naming the rule file and the node's pointer."""

from __future__ import annotations

import pytest

from tests.support.backends import echo
from tests.support.config import proxy, rule
from tests.support.daemon import ROOT, Lab
from tests.support.net import connect, free_port
from tests.support.tls import TlsCerts

pytestmark = pytest.mark.timeout(60)


def tls_flow(cert: str, key: str, target: str) -> dict:
    return {"upgrade": {"input": {"protocol": "tls", "certs": [{"cert": cert, "key": key}]},
                        "output": {"next": proxy(target)}}}


def test_relative_paths_resolve_against_the_config_dir():
    with Lab() as lab:
        assert lab.conf != ROOT                         # vaned runs in ROOT: not where the certs are
        certs = TlsCerts()
        issued = certs.ca.issue_cert("term.test")
        (lab.conf / "certs").mkdir()
        issued.cert_chain_pems[0].write_to_path(str(lab.conf / "certs" / "term.pem"))
        issued.private_key_pem.write_to_path(str(lab.conf / "certs" / "term.key"))
        backend = lab.tcp(echo)
        port = free_port()
        d = lab.vaned({"term.json": rule("term", tls_flow("certs/term.pem", "certs/term.key", backend.target),
                                         listen=f"127.0.0.1:{port}")})
        d.wait_listening(port)
        with certs.client_context().wrap_socket(connect(port, timeout=10), server_hostname="term.test") as tls:
            tls.sendall(b"ping")
            assert tls.recv(4) == b"ping"
        certs_info = d.mgmt("get_certs")["certs"]
        assert any(str(lab.conf / "certs" / "term.pem") in str(c) for c in certs_info), certs_info


def test_a_missing_certificate_names_the_rule_file_and_pointer():
    with Lab() as lab:
        d = lab.vaned({"term.json": rule("term", tls_flow("certs/nope.pem", "certs/nope.key", "127.0.0.1:9"),
                                         listen=f"127.0.0.1:{free_port()}")}, ready=False)
        assert d.wait() == 1
        assert "rules/term.json: /flow/upgrade" in d.stderr, d.stderr
        assert str(lab.conf / "certs" / "nope.pem") in d.stderr and "Traceback" not in d.stderr
