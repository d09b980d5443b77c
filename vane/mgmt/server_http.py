"""Management over HTTP: ``POST /v1/<verb>`` with the args as JSON body (DESIGN.md §9).

Binds ``127.0.0.1`` and ``[::1]`` at ``VANE_MGMT_HTTP_PORT`` (3333), or ``0.0.0.0`` and
``[::]`` with ``VANE_MGMT_HTTP_PUBLIC=1``, which requires a token (refusing to start without
one). With a token every request needs ``Authorization: Bearer <token>`` (constant-time
compare), else 401. The response body is the §9 response frame; error kinds map to HTTP
statuses. Streams (``tail_*``) answer ``application/x-ndjson``, chunked, one frame per line
(an empty line every 15 idle seconds as a heartbeat), until the client disconnects.
``GET /metrics`` serves the Prometheus text format for scrapers.
"""

from __future__ import annotations

import errno
import hmac
import logging
import socket
from typing import Any, Callable, Iterable, Iterator

import gevent
from gevent.pool import Pool
from gevent.pywsgi import WSGIHandler, WSGIServer

from vane.mgmt.api import DaemonAPI
from vane.mgmt.protocol import (
    BAD_REQUEST,
    HTTP_STATUS,
    INTERNAL,
    MAX_LINE,
    TOO_LARGE,
    UNAUTHORIZED,
    MgmtError,
    Request,
    encode,
    error_frame,
    parse_request,
    response_frame,
)
from vane.mgmt.server_unix import MgmtStartError
from vane.mgmt.streams import stream_frames, watch_eof
from vane.mgmt.verbs import Stream, dispatch
from vane.observe.hub import Subscription
from vane.observe.metrics import CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE

__all__ = ["DEFAULT_PORT", "HttpMgmtServer"]

log = logging.getLogger("vane.mgmt.http")

DEFAULT_PORT = 3333
HEARTBEAT_SECS = 15.0  # an empty line on an idle stream; clients time out after a few missed
LOOPBACK = ("127.0.0.1", "::1")
PUBLIC = ("0.0.0.0", "::")
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            413: "Payload Too Large", 422: "Unprocessable Entity", 500: "Internal Server Error",
            503: "Service Unavailable"}

StartResponse = Callable[..., Any]


class _Handler(WSGIHandler):
    """Adds a socket timeout and exposes the socket so a stream can notice a disconnect."""

    timeout = 30.0

    def handle(self) -> None:
        self.socket.settimeout(self.timeout)
        super().handle()

    def get_environ(self) -> dict:
        env = super().get_environ()
        env["vane.socket"] = self.socket
        return env


def _bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(64)
    except BaseException:
        sock.close()
        raise
    return sock


class HttpMgmtServer:
    """HTTP management endpoint for ``daemon``; ``start()`` raises MgmtStartError."""

    def __init__(
        self,
        daemon: DaemonAPI,
        port: int = DEFAULT_PORT,
        token: str | None = None,
        public: bool = False,
        hosts: Iterable[str] | None = None,
        max_body: int = MAX_LINE,
        max_clients: int = 64,
    ) -> None:
        if public and not token:
            raise MgmtStartError(
                "VANE_MGMT_HTTP_PUBLIC=1 needs VANE_MGMT_HTTP_TOKEN: refusing to expose management without a token"
            )
        self.daemon = daemon
        self.port = port
        self.token = token or None
        self.public = public
        self.hosts = tuple(hosts) if hosts is not None else (PUBLIC if public else LOOPBACK)
        self.max_body = max_body
        self._pool = Pool(max_clients)
        self._servers: list[WSGIServer] = []
        self._streams: set[Subscription] = set()
        self.addresses: list[tuple[str, int]] = []

    def start(self) -> None:
        """Bind every host (a missing address family is a warning) and start serving."""
        port = self.port
        errors = []
        for host in self.hosts:
            try:
                sock = _bind_tcp(host, port)
            except OSError as e:
                if e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    log.warning("management HTTP: address not available", extra={"host": host, "error": str(e)})
                    errors.append(f"{host}: {e}")
                    continue
                self.stop()
                raise MgmtStartError(f"management HTTP cannot listen on {host} port {port}: {e}") from None
            port = sock.getsockname()[1]  # port 0: the other families reuse the port chosen first
            server = WSGIServer(sock, self._app, handler_class=_Handler, spawn=self._pool,
                                log=None, error_log=log)
            server.start()
            self._servers.append(server)
            self.addresses.append((host, port))
        if not self._servers:
            raise MgmtStartError("management HTTP could not bind any address: " + "; ".join(errors))
        self.port = port
        log.info("management HTTP listening",
                 extra={"addresses": [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.addresses],
                        "token": bool(self.token)})

    def stop(self, timeout: float = 2.0) -> None:
        for sub in list(self._streams):
            sub.close("shutdown")
        for server in self._servers:
            server.stop(timeout=timeout)
        self._servers = []

    # WSGI app -----------------------------------------------------------------------
    def _app(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        try:
            return self._route(environ, start_response)
        except Exception:
            log.exception("management HTTP request failed")
            return self._frame(start_response, error_frame(None, MgmtError(INTERNAL, "internal error")), 500)

    def _authorized(self, environ: dict) -> bool:
        if self.token is None:
            return True
        header = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode(), self.token.encode())

    def _route(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "")
        request_id = environ.get("HTTP_X_REQUEST_ID") or None
        if request_id is not None:
            request_id = request_id[:128]
        if not self._authorized(environ):
            err = MgmtError(UNAUTHORIZED, "missing or wrong bearer token")
            return self._frame(start_response, error_frame(request_id, err), 401,
                               [("WWW-Authenticate", 'Bearer realm="vaned"')])
        if path == "/metrics" and method in ("GET", "HEAD"):
            body = self.daemon.metrics.render_prometheus()
            start_response("200 OK", [("Content-Type", PROMETHEUS_CONTENT_TYPE),
                                      ("Content-Length", str(len(body)))])
            return [body]
        if not path.startswith("/v1/") or "/" in path[4:] or not path[4:]:
            err = MgmtError(BAD_REQUEST, f"no such endpoint {path[:100]!r}; use POST /v1/<verb>")
            return self._frame(start_response, error_frame(request_id, err), 404)
        if method != "POST":
            err = MgmtError(BAD_REQUEST, "use POST with the verb's args as a JSON object body")
            return self._frame(start_response, error_frame(request_id, err), 405, [("Allow", "POST")])
        body = self._read_body(environ)
        if body is None:
            err = MgmtError(TOO_LARGE, f"request body larger than {self.max_body} bytes")
            return self._frame(start_response, error_frame(request_id, err), 413, [("Connection", "close")])
        try:
            req = parse_request(body, verb=path[4:])
            req = Request(req.verb, req.args, request_id)
            result = dispatch(self.daemon, req)
        except MgmtError as e:
            return self._frame(start_response, error_frame(request_id, e), HTTP_STATUS.get(e.kind, 500))
        if isinstance(result, Stream):
            return self._stream(environ, start_response, request_id, result)
        return self._frame(start_response, response_frame(request_id, result), 200)

    def _read_body(self, environ: dict) -> bytes | None:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > self.max_body:
            return None
        data = environ["wsgi.input"].read(self.max_body + 1)
        return None if len(data) > self.max_body else data

    @staticmethod
    def _frame(start_response: StartResponse, frame: dict, status: int,
               headers: list[tuple[str, str]] | None = None) -> list[bytes]:
        try:
            body = encode(frame)
        except (TypeError, ValueError) as e:
            body, status = encode(error_frame(frame.get("request_id"), MgmtError(INTERNAL, f"bad result: {e}"))), 500
        hdrs = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        start_response(f"{status} {_REASONS.get(status, 'Error')}", hdrs + (headers or []))
        return [body]

    def _stream(self, environ: dict, start_response: StartResponse, request_id: Any,
                stream: Stream) -> Iterator[bytes]:
        sub = stream.subscription
        self._streams.add(sub)
        sock = environ.get("vane.socket")
        watcher = gevent.spawn(watch_eof, sock, sub) if sock is not None else None
        start_response("200 OK", [("Content-Type", "application/x-ndjson"), ("Cache-Control", "no-store"),
                                  ("Connection", "close")])

        def frames() -> Iterator[bytes]:
            try:
                yield b"\n"  # pywsgi sends the headers with the first non-empty chunk: send them now
                for frame in stream_frames(stream, request_id, heartbeat=HEARTBEAT_SECS):
                    yield b"\n" if frame is None else encode(frame)
            finally:
                if watcher is not None:
                    watcher.kill(block=False)
                sub.close()
                self._streams.discard(sub)

        return frames()
