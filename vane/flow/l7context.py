"""The HTTP request context (seed 000: L7 context): one request, its response container, KV.

The KV starts as a copy of the connection's (``conn.*``, ``tls.*``, ...). ``req.*`` and
``res.*`` keys are lazy: computed the first time a node reads them, so a request that only
routes on ``req.host`` never parses cookies or buffers its body (DESIGN.md §5).
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qsl

from vane.engine.context import Context
from vane.net.http.errors import HttpError
from vane.net.http.message import Body, BodyTooLarge, Headers, Request, Response

MAX_PARSED_ITEMS = 256  # cookies / query args parsed per request


class L7Context(Context):
    __slots__ = ("conn", "request", "response", "services", "settings", "started", "hijack", "fail_status",
                 "response_edits", "_cookies", "_args", "h1", "seq")

    def __init__(self, conn: Any, request: Request, services: Any, settings: Any, seq: int = 0) -> None:
        kv = conn.kv.child(self._lazy)
        kv._d["conn.layer"] = "l7"
        super().__init__("l7", kv, conn.conn_id)
        self.on_step = conn.on_step
        self.conn = conn                  # the L4 context (socket, peer, record)
        self.request = request
        self.response: Response | None = None
        self.services = services
        self.settings = settings
        self.started = time.perf_counter()
        self.hijack: Any = None           # set by a terminator that took the stream over (WebSocket)
        self.fail_status: int | None = None
        self.response_edits: list[dict] | None = None  # `headers` response edits made before a response existed
        self.h1: Any = None               # the HTTP/1 connection, for upgrades
        self._cookies: dict[str, str] | None = None
        self._args: dict[str, str] | None = None
        self.seq = seq                    # the request's number on its connection (HTTP/2: stream id)

    @property
    def request_id(self) -> str:
        """``<connection uuid>/<seq>``: names the request in logs and the flow log."""
        return f"{self.conn_id}/{self.seq}"

    # -- lazy req.* / res.* ----------------------------------------------------------------------

    def _lazy(self, key: str) -> str | None:
        if key.startswith("req."):
            return self._req(key)
        if key.startswith("res."):
            return self._res(key)
        return None

    def _req(self, key: str) -> str | None:
        req = self.request
        name = key[4:]
        if name == "host":
            return req.host
        if name == "path":
            return req.path
        if name == "method":
            return req.method
        if name == "query":
            return req.query
        if name == "uri":
            return req.uri
        if name == "version":
            return req.version
        if name == "scheme":
            return req.scheme
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
        from vane.engine.outcome import FINISHED
        self.response = simple_response(status, body, headers)
        return FINISHED


def simple_response(status: int, body: str | bytes | None = None, headers: dict | None = None,
                    content_type: str = "text/plain; charset=utf-8") -> Response:
    if body is None:
        body = "" if status in (204, 304) or status < 200 else f"{status} {reason(status)}\n"
    data = body.encode("utf-8") if isinstance(body, str) else body
    hl = Headers()
    if data:
        hl.items_.append((b"content-type", content_type.encode("latin-1")))
    for k, v in (headers or {}).items():
        hl.set(k, str(v))
    return Response(status, hl, Body.from_bytes(data))


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


_REASONS = {200: "OK", 201: "Created", 204: "No Content", 301: "Moved Permanently", 302: "Found",
            303: "See Other", 304: "Not Modified", 307: "Temporary Redirect", 308: "Permanent Redirect",
            400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 408: "Request Timeout", 413: "Content Too Large",
            421: "Misdirected Request", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
            504: "Gateway Timeout"}


def reason(status: int) -> str:
    return _REASONS.get(status, "")
