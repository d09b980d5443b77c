"""Automatic certificates over ACME (RFC 8555; DESIGN.md §3 ``tls``, config.json ``acme``).

``plan`` is pure (the compiler uses it offline); ``store`` keeps the account key and the
certificates under ``$VANE_STATE_DIR/acme/``; ``challenges`` holds what the HTTP-01 and
TLS-ALPN-01 responders answer; ``issuer`` runs one order against the CA (blocking code,
cooperative under gevent); ``manager`` decides when to issue and renew and swaps the
certificates the listeners serve.
"""
