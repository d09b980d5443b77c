"""The HTTP request context (seed 000: L7 context): one request, its response container, KV.

The KV starts as a copy of the connection's (``conn.*``, ``tls.*``, ...). ``req.*`` and
``res.*`` keys are lazy: computed the first time a node reads them, so a request that only
routes on ``req.host`` never parses cookies or buffers its body (DESIGN.md §5).
"""

from __future__ import annotations

import time
from operator import attrgetter
from typing import Any
from urllib.parse import parse_qsl

from vane.engine.context import Context
from vane.engine.outcome import FINISHED
from vane.net.http.errors import HttpError
from vane.net.http.message import Body, BodyTooLarge, Headers, Request, Response
from vane.net.http.status import plain_response

from .realip import client_ip

MAX_PARSED_ITEMS = 256  # cookies / query args parsed per request


class L7Context(Context):
    """One HTTP request's walk: the request, the response container, the lazy ``req.*`` /
    ``res.*`` keys over a copy of the connection's KV, and what the HTTP layer needs back
    (a failure status, a tunnel a terminator opened)."""

    __slots__ = ("l4", "conn", "request", "response", "services", "settings", "started", "tunnel",
                 "fail_status", "response_edits", "_cookies", "_args", "seq", "upstream", "upstream_secs")

    def __init__(self, l4: Any, request: Request, services: Any, settings: Any, seq: int = 0) -> None:
        kv = l4.kv.child(self._lazy)
        kv._d["conn.layer"] = "l7"
        super().__init__("l7", kv, l4.conn_id)
        self.on_step = l4.on_step
        self.l4 = l4                      # the connection's L4 context (stream, listener, tls.* keys)
        self.conn = l4.conn               # the Connection (peer, local, counters; None in unit tests)
        self.request = request
        self.response: Response | None = None
        self.services = services
        self.settings = settings
        self.started = time.perf_counter()
        self.tunnel: Any = None           # (upstream stream, bytes read past its 101, idle timeout)
        self.fail_status: int | None = None
        self.response_edits: list[dict] | None = None  # `headers` response edits made before a response existed
        self._cookies: dict[str, str] | None = None
        self._args: dict[str, str] | None = None
        self.seq = seq                    # the request's number on its connection (HTTP/2: stream id)
        self.upstream: str | None = None  # the backend that answered (access log)
        self.upstream_secs: float | None = None  # from sending the request upstream to its response head

    @property
    def request_id(self) -> str:
        """``<connection uuid>/<seq>``: names the request in logs and the flow log."""
        return f"{self.conn_id}/{self.seq}"

    # -- lazy req.* / res.* ----------------------------------------------------------------------

    def _lazy(self, key: str) -> str | None:
        plain = _REQ_FIELDS.get(key)
        if plain is not None:
            return plain(self.request)
        if key.startswith("req."):
            return self._req(key)
        if key.startswith("res."):
            return self._res(key)
        return None

    def _req(self, key: str) -> str | None:
        req = self.request
        name = key[4:]
        if name.startswith("header."):
            return _header(req.headers, name[7:])
        if name.startswith("cookie."):
            if self._cookies is None:
                self._cookies = _cookies(req.headers.get_all("cookie"))
            return self._cookies.get(name[7:])
        if name.startswith("arg."):
            if self._args is None:
                self._args = _args(req.query)
            return self._args.get(name[4:])
        if name == "body":
            return self.read_body(req.body).decode("utf-8", "replace")
        if name == "client_ip":
            return client_ip(self.kv.get("conn.ip") or "", req.headers, getattr(self.services, "trusted_proxies", None))
        return None

    def _res(self, key: str) -> str | None:
        resp = self.response
        if resp is None:
            return None
        name = key[4:]
        if name == "status":
            return str(resp.status)
        if name.startswith("header."):
            return _header(resp.headers, name[7:])
        if name == "body":
            return self.read_body(resp.body).decode("utf-8", "replace")
        return None

    def read_body(self, body: Body) -> bytes:
        """Buffer a body for a node that reads it; past the limit the request gets 413."""
        try:
            return body.read_all(self.settings.max_body_size)
        except BodyTooLarge:
            self.fail_status = 413
            raise HttpError(413, "body larger than VANE_MAX_BODY_SIZE") from None

    # -- answering -------------------------------------------------------------------------------

    def final_response(self) -> Response | None:
        """The response to send, with pending ``headers`` edits applied."""
        resp = self.response
        if resp is not None and self.response_edits:
            for ops in self.response_edits:
                resp.headers.apply(ops)
            self.response_edits = None
        return resp

    def respond_status(self, status: int, body: str | None = None, headers: dict | None = None) -> Any:
        self.response = plain_response(status, body, headers)
        return FINISHED


_REQ_FIELDS = {
    "req.host": attrgetter("host"), "req.path": attrgetter("path"), "req.method": attrgetter("method"),
    "req.query": attrgetter("query"), "req.uri": attrgetter("uri"), "req.version": attrgetter("version"),
    "req.scheme": attrgetter("scheme"),
}


def _header(headers: Headers, name: str) -> str | None:
    values = headers.get_all(name)
    if not values:
        return None
    return ("; " if name == "cookie" else ", ").join(values)


def _args(query: str) -> dict[str, str]:
    """Query fields, the first of each name; more than MAX_PARSED_ITEMS is refused (400), so
    a rule never decides on a prefix of what the backend reads."""
    if query.count("&") >= MAX_PARSED_ITEMS:
        raise HttpError(400, f"more than {MAX_PARSED_ITEMS} query fields")
    out: dict[str, str] = {}
    for k, v in parse_qsl(query, keep_blank_values=True):
        out.setdefault(k, v)
    return out


def _cookies(values: list[str]) -> dict[str, str]:
    """Cookies, the first of each name; more than MAX_PARSED_ITEMS is refused (400)."""
    out: dict[str, str] = {}
    count = 0
    for value in values:
        for part in value.split(";"):
            name, sep, val = part.strip().partition("=")
            if sep and name:
                count += 1
                if count > MAX_PARSED_ITEMS:
                    raise HttpError(400, f"more than {MAX_PARSED_ITEMS} cookies")
                if name not in out:
                    out[name] = val.strip().strip('"')
    return out
