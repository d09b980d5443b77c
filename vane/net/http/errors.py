"""Errors raised by the HTTP codecs.

``HttpError`` is a client-side protocol or limit breach, answered with its ``status`` (400,
408, 413, 431, 505, ...). ``UpstreamError`` and its subclasses are failures talking to a
backend; the caller maps them to 502 (connect/protocol) or 504 (timeout) and uses
``request_sent`` / ``response_started`` to decide whether a retry is safe.
"""

from __future__ import annotations

from .status import reason as status_reason


class HttpError(Exception):
    """A malformed request or a breached limit; answer ``status`` and usually close.

    ``client_fault``: the executor answers ``status`` when a plugin lets one escape (the
    client's mistake, not a vane error)."""

    client_fault = True

    def __init__(self, status: int, reason: str = "", close: bool = True) -> None:
        self.status = status
        self.reason = reason or status_reason(status) or "Error"
        self.close = close
        super().__init__(status, self.reason)

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"


class ClientDisconnected(HttpError):
    """The client closed or reset the connection in the middle of a request body."""

    def __init__(self, reason: str = "client closed mid-body") -> None:
        super().__init__(400, reason, True)


class UpstreamError(Exception):
    """Talking to a backend failed.

    ``request_sent``: at least one byte of the request reached the socket, so the request may
    have been acted upon. ``response_started``: at least one byte of a response arrived.
    """

    status = 502

    def __init__(self, message: str = "", request_sent: bool = False,
                 response_started: bool = False) -> None:
        super().__init__(message or self.__class__.__name__)
        self.request_sent = request_sent
        self.response_started = response_started


class UpstreamConnectError(UpstreamError):
    """The connection to the backend could not be established (or was reset before use)."""


class UpstreamTimeout(UpstreamError):
    """The backend did not answer, or stalled mid-body, within the configured time."""

    status = 504


class UpstreamBusy(UpstreamError):
    """The client already holds its share of the backend's connections (answered 503)."""

    status = 503


class UpstreamProtocolError(UpstreamError):
    """The backend sent something that is not valid HTTP, or closed mid-message."""
