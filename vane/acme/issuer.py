"""One ACME order, start to finish, with the ``acme`` library (RFC 8555): account, order,
challenges, finalization, certificate. Blocking code over sockets: under gevent's monkey
patching it yields while it waits, and every request has a timeout.

An error is an ``IssueError`` with an operator-readable message and, when the CA said when to
come back (``Retry-After``, e.g. with a rate limit), that delay.
"""

from __future__ import annotations

import datetime
import logging
import time
from typing import Any

import josepy as jose
import requests
from acme import challenges, client, errors, messages
from acme import crypto_util as acme_crypto
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vane import __version__

from .challenges import TLSALPN01, ChallengeBoard
from .plan import AcmeSettings
from .store import AcmeStore

__all__ = ["IssueError", "Issuer"]

log = logging.getLogger("vane.acme")

NETWORK_TIMEOUT = 30      # per request to the CA
ORDER_DEADLINE = 180.0    # validation and finalization of one order
ARI_RETRY = 6 * 3600.0    # RFC 9773's default between renewal-information checks


class IssueError(Exception):
    """An order failed; ``retry_after`` is the CA's own delay (seconds) when it gave one."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Network(client.ClientNetwork):
    """The library's network layer, remembering the last response (for its ``Retry-After``)."""

    last_response: requests.Response | None = None

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        self.last_response = None
        response = super()._send_request(method, url, *args, **kwargs)
        self.last_response = response
        return response


def _retry_after(net: _Network) -> float | None:
    response = net.last_response
    if response is None or "Retry-After" not in response.headers:
        return None
    when = client.ClientV2.retry_after(response, 0)
    return max(0.0, (when - datetime.datetime.now()).total_seconds())


def _describe(exc: BaseException) -> str:
    if isinstance(exc, messages.Error):
        text = exc.detail or exc.description or str(exc)
        kind = exc.code or (exc.typ or "").rsplit(":", 1)[-1]
        sub = "; ".join(s.detail or "" for s in (exc.subproblems or ()) if s.detail)
        return f"CA error {kind}: {text}" + (f" ({sub})" if sub else "")
    if isinstance(exc, errors.ValidationError):
        failed = []
        for authzr in exc.failed_authzrs:
            for chall in authzr.body.challenges:
                if chall.error is not None:
                    failed.append(f"{authzr.body.identifier.value}: {chall.error.detail or chall.error.typ}")
        return "validation failed: " + ("; ".join(failed) or "the CA rejected the challenge")
    if isinstance(exc, errors.TimeoutError):
        return "the CA did not finish the order in time"
    if isinstance(exc, requests.exceptions.SSLError):
        return f"cannot verify the CA's TLS certificate (set acme.ca_bundle for a private CA): {exc}"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return f"cannot reach the CA: {exc}"
    if isinstance(exc, requests.exceptions.Timeout):
        return "the CA did not answer in time"
    return f"{type(exc).__name__}: {exc}"


class Issuer:
    """Talks to one CA directory with one account; ``issue`` runs one order for a name set."""

    def __init__(self, settings: AcmeSettings, store: AcmeStore, board: ChallengeBoard) -> None:
        self.settings = settings
        self.store = store
        self.board = board
        self._client: client.ClientV2 | None = None
        self._net: _Network | None = None

    def issue(self, names: tuple[str, ...]) -> tuple[bytes, bytes]:
        """(fullchain PEM, key PEM) for ``names``; raises IssueError."""
        try:
            acme, net = self._account()
            key = ec.generate_private_key(ec.SECP256R1())
            key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
            order = acme.new_order(acme_crypto.make_csr(key_pem, list(names)))
            posted: list[tuple[str | None, str | None]] = []
            try:
                for authzr in order.authorizations:
                    if authzr.body.status == messages.STATUS_VALID:
                        continue
                    posted.append(self._answer(acme, net, authzr))
                deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_DEADLINE)
                order = acme.poll_and_finalize(order, deadline)
            finally:
                for token, name in posted:
                    self.board.remove(token=token, name=name)
            return order.fullchain_pem.encode("ascii"), key_pem
        except IssueError:
            raise
        except Exception as exc:  # noqa: BLE001 - the library raises many kinds; each becomes one message
            retry = _retry_after(self._net) if self._net is not None else None
            if not isinstance(exc, messages.Error):
                self._client = None  # reconnect (and re-read the directory) next time
            elif exc.code == "accountDoesNotExist":  # the CA forgot the account: register again
                self.store.save_account(self.settings.directory, {})
                self._client = None
            raise IssueError(_describe(exc), retry) from None

    def suggested_renewal(self, cert_pem: bytes) -> tuple[float | None, float]:
        """ACME Renewal Information (RFC 9773): (when the CA wants the renewal, or None when it
        offers no ARI or cannot say now; when to ask again)."""
        later = time.time() + ARI_RETRY
        try:
            acme, _ = self._account()
            when, ask_again = acme.renewal_time(cert_pem)  # (None, later) when the CA offers no ARI
        except Exception as exc:  # noqa: BLE001 - ARI only advises: the configured renewal point stands
            log.info("ACME renewal information unavailable: %s", _describe(exc))
            return None, later
        return (when.timestamp() if when else None), max(time.time() + 60, ask_again.timestamp())

    def _answer(self, acme: client.ClientV2, net: _Network, authzr: messages.AuthorizationResource
                ) -> tuple[str | None, str | None]:
        """Put up the answer to the first challenge we take and tell the CA to validate."""
        name = authzr.body.identifier.value
        offered = {c.chall.typ: c for c in authzr.body.challenges}
        for typ in self.settings.challenges:
            challb = offered.get(typ)
            if challb is None:
                continue
            chall = challb.chall
            if typ == "tls-alpn-01" and not isinstance(chall, TLSALPN01):
                chall = TLSALPN01.from_json(challb.chall.to_json())
            key_authz = chall.key_authorization(net.key)
            if typ == "http-01":
                token = chall.encode("token")
                self.board.put_http01(token, key_authz)
                acme.answer_challenge(challb, challenges.HTTP01Response(key_authorization=key_authz))
                return token, None
            self.board.put_tls_alpn01(name, key_authz)
            acme.answer_challenge(challb, chall.response(net.key))
            return None, name
        raise IssueError(f"{name}: the CA offers none of the enabled challenges "
                         f"({', '.join(self.settings.challenges)}); it offers {', '.join(sorted(offered))}")

    def _account(self) -> tuple[client.ClientV2, _Network]:
        if self._client is not None and self._net is not None:
            return self._client, self._net
        settings = self.settings
        key, meta = self.store.account_key(settings.directory)
        jwk = jose.JWKEC(key=key)
        net = _Network(jwk, alg=jose.ES256, verify_ssl=settings.ca_bundle or True,
                       user_agent=f"vaned/{__version__}", timeout=NETWORK_TIMEOUT)
        self._net = net
        directory = client.ClientV2.get_directory(settings.directory, net)
        acme = client.ClientV2(directory, net)
        uri = meta.get("uri")
        if uri:
            net.account = messages.RegistrationResource(uri=uri, body=messages.Registration())
        else:
            eab = None
            if settings.eab is not None:
                eab = messages.ExternalAccountBinding.from_data(
                    account_public_key=jwk.public_key(), kid=settings.eab[0], hmac_key=settings.eab[1],
                    directory=directory)
            elif acme.external_account_required():
                raise IssueError("the CA requires external account binding: set acme.eab "
                                 "(kid and hmac_key from the CA)")
            reg = messages.NewRegistration.from_data(email=settings.email, terms_of_service_agreed=True,
                                                     external_account_binding=eab)
            try:
                regr = acme.new_account(reg)
            except errors.ConflictError as exc:  # the key has an account already (account.json was lost)
                regr = messages.RegistrationResource(uri=exc.location, body=messages.Registration())
                net.account = regr
            self.store.save_account(settings.directory, {"uri": regr.uri, "created": time.time()})
            log.info("ACME account registered at %s", settings.directory)
        self._client = acme
        return acme, net
