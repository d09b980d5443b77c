"""Forwarding one request upstream, shared by ``fetch`` and ``proxy`` (DESIGN.md §6).

- ``upstream_headers``: the client's fields minus hop-by-hop ones (and the names listed in
  ``Connection``), plus ``Via`` and, with ``forwarded``, X-Forwarded-For/Proto/Host and
  RFC 7239 ``Forwarded``. Inbound forwarding fields are kept only when the peer is in
  ``trusted_proxies``; otherwise they are replaced, so a client cannot forge its address.
- ``exchange``: send through the pool and read the response head. Retries only when safe: a
  request that never reached the wire; a stale keep-alive connection that failed before any
  response byte (any method if nothing was written, idempotent methods otherwise); a connect
  failure for idempotent methods, up to ``retries``. Bodies that were already streamed are
  never replayed; a request that could not be retried (non-idempotent, or a streamed body)
  probes a pooled connection for staleness before using it.
"""

from __future__ import annotations

import ipaddress
from functools import partial
from typing import Any

from vane.net.dial import unmapped
from vane.net.http.errors import UpstreamError, UpstreamTimeout
from vane.net.http.message import (
    FORWARDING_FIELDS,
    HOP_BY_HOP,
    Body,
    Headers,
    Request,
    Response,
    accepts_trailers,
    without_hop_by_hop,
)
from vane.net.upstream.options import Options, Target
from vane.net.upstream.pool import UpstreamPool

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_DROP_PLAIN = HOP_BY_HOP
_DROP_FORWARDED = HOP_BY_HOP | FORWARDING_FIELDS
_TE_TRAILERS = (b"te", b"trailers")
_VIA = {"1.1": (b"via", b"1.1 vane"), "1.0": (b"via", b"1.0 vane"), "2": (b"via", b"2 vane")}
_FORWARDING_CACHE = 1024

# -- request ---------------------------------------------------------------------------------------

def client_ip(peer: tuple | None) -> str:
    """The client address as the forwarding fields name it: IPv4-mapped IPv6 shown as IPv4,
    ``unix`` for a unix-socket peer, "" without one."""
    host = peer[0] if peer else ""
    if not isinstance(host, str):
        return "unix"
    return unmapped(host)


def _trusted(ip: str, nets: list) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in net for net in nets)


def upstream_headers(req: Request, ip: str, opts: Options) -> Headers:
    """The header list sent upstream for ``req`` from the client at ``ip``."""
    items = req.headers.items_
    trusted = False
    if opts.forwarded:
        trusted = bool(opts.trusted) and _trusted(ip, opts.trusted)
        drop = _DROP_PLAIN if trusted else _DROP_FORWARDED
    else:
        drop = _DROP_PLAIN
    out = without_hop_by_hop(items, drop) if req.hop else items
    if out is items:
        out = list(items)
    elif any(k == b"te" and accepts_trailers(v) for k, v in items):
        out.append(_TE_TRAILERS)    # hop-by-hop, but what the client takes (gRPC needs it): passed on
    if opts.host is not None:
        out = [kv for kv in out if kv[0] != b"host"]
        out.append((b"host", opts.host))
    elif req.version == "2" and req.authority:
        out = [kv for kv in out if kv[0] != b"host"]
        out.append((b"host", req.authority.encode("latin-1")))
    elif not req.authority and opts.upstream is not None:   # an HTTP/1.0 client sent no Host: name the
        out.append((b"host", opts.upstream.authority.encode("latin-1")))  # upstream (a group's: per backend)
    if opts.extra:
        names = opts.extra_names
        out = [kv for kv in out if kv[0] not in names]
        out.extend(opts.extra)
    out.append(_VIA.get(req.version) or (b"via", f"{req.version} vane".encode("latin-1")))
    if opts.forwarded:
        _add_forwarding(out, req, ip, trusted)
    return Headers(out)


_fresh_cache: dict[tuple, tuple] = {}


def _fresh_forwarding(ip: str, proto: str, host: str) -> tuple:
    """The four forwarding fields for (peer, scheme, host); memoised, the cache is bounded."""
    key = (ip, proto, host)
    fields = _fresh_cache.get(key)
    if fields is None:
        items = [(b"x-forwarded-for", ip.encode("latin-1")), (b"x-forwarded-proto", proto.encode("latin-1"))]
        if host:
            items.append((b"x-forwarded-host", host.encode("latin-1")))
        items.append((b"forwarded", _forwarded_element(ip, proto, host)))
        fields = tuple(items)
        if len(_fresh_cache) >= _FORWARDING_CACHE:
            _fresh_cache.clear()
        _fresh_cache[key] = fields
    return fields


def _add_forwarding(out: list, req: Request, ip: str, trusted: bool) -> None:
    proto = req.scheme or "http"
    host = req.authority
    if not trusted:
        out.extend(_fresh_forwarding(ip, proto, host))
        return
    # a trusted proxy in front of us: extend its chains, keep its view of proto and host
    prior_for = [v for k, v in out if k == b"x-forwarded-for"]
    prior_fwd = [v for k, v in out if k == b"forwarded"]
    has_proto = any(k == b"x-forwarded-proto" for k, _ in out)
    has_host = any(k == b"x-forwarded-host" for k, _ in out)
    out[:] = [kv for kv in out if kv[0] not in (b"x-forwarded-for", b"forwarded")]
    out.append((b"x-forwarded-for", b", ".join(prior_for + [ip.encode("latin-1")])))
    if not has_proto:
        out.append((b"x-forwarded-proto", proto.encode("latin-1")))
    if not has_host and host:
        out.append((b"x-forwarded-host", host.encode("latin-1")))
    out.append((b"forwarded", b", ".join(prior_fwd + [_forwarded_element(ip, proto, host)])))


def _forwarded_element(ip: str, proto: str, host: str) -> bytes:
    node = f'"[{ip}]"' if ":" in ip else ip
    text = f"for={node};proto={proto}"
    if host:
        safe = host.replace("\\", "\\\\").replace('"', '\\"')
        text += f';host="{safe}"'
    return text.encode("latin-1")


def upstream_request(req: Request, target: Target | Options, headers: Headers, h2: bool) -> Request:
    """The request as the upstream (``target``, or a single-upstream node's options) sees it
    (the client's own object when nothing differs)."""
    up = target.upstream
    if not h2 and not up.base:
        return req
    authority = (headers.getb(b"host") or b"").decode("latin-1") or up.authority
    scheme = "https" if up.tls else "http"
    return Request(req.method, up.target(req.path), req.query, req.version, headers, req.body, scheme, authority)


# -- response --------------------------------------------------------------------------------------

def strip_response(resp: Response, keep_upgrade: bool = False) -> None:
    """Drop hop-by-hop fields (and those named in ``Connection``) from an upstream response."""
    if resp.hop:
        resp.headers.items_ = without_hop_by_hop(resp.headers.items_, HOP_BY_HOP, keep_upgrade)


# -- exchange --------------------------------------------------------------------------------------

def exchange(pool: UpstreamPool, req: Request, opts: Options, headers: Headers,
             client: str | None, target: Target | None = None, backend: Any = None,
             retries: int | None = None) -> tuple[Response, Any]:
    """Send ``req`` upstream and return (response with a streaming body, connection).

    ``client`` (an IP) draws on that client's share of the endpoint. Raises ``UpstreamError``
    (a subclass tells 502 from 503 and 504). On any exception the connection is released; on
    success an HTTP/1.1 connection returns to the pool when the body ends, and its
    ``body_cut`` says why the request body was not sent whole (an early answer).

    ``target`` is the backend (default: the node's one upstream); ``backend`` its group
    backend, whose requests in flight this one counts in; ``retries`` the refused connects
    retried on the same endpoint (default ``opts.retries``; a group retries on another one).
    """
    method = req.method
    body = req.body
    idempotent = method in IDEMPOTENT
    replayable = body.length == 0 or body.is_buffered
    if target is None:
        target = opts.target
    if retries is None:
        retries = opts.retries
    probe = not (idempotent and replayable)   # what cannot be retried checks its connection first
    ep = pool.endpoint(target.spec)
    fresh = False
    attempts = 0
    while True:
        attempts += 1
        conn = None
        try:
            conn = pool.acquire(ep, opts.connect_timeout, fresh=fresh, probe=probe, client=client, backend=backend)
            h2 = conn.multiplexed
            done = None
            if h2:                          # a stream's end gives the client's share back
                if backend is not None:
                    done = partial(pool.stream_done, ep, client, backend)
                elif client is not None:
                    done = partial(pool.client_done, ep, client)
            else:
                conn.idle_timeout = opts.read_timeout
            resp = conn.request(upstream_request(req, target, headers, h2), headers, opts.timeout, done)
            return resp, conn
        except UpstreamError as exc:
            if conn is not None:
                pool.discard(conn)
            if not replayable or attempts > retries + 2 or isinstance(exc, UpstreamTimeout) \
                    or exc.response_started:
                raise
            h1 = conn is not None and not conn.multiplexed
            if h1 and conn.reused and (not exc.request_sent or idempotent):
                fresh = True                # a stale keep-alive connection: once more on a new one
                continue
            # nothing written: a refused connect (idempotent methods only, up to `retries`), or
            # an HTTP/2 stream the upstream refused or cut off with GOAWAY (never processed)
            if not exc.request_sent and retries and (idempotent or (conn is not None and not h1)):
                retries -= 1
                continue
            raise
        except BaseException:
            if conn is not None:
                pool.discard(conn)
            raise


class GuardedBody(Body):
    """A response body parked in the container (``fetch``): if the flow drops it unread, the
    upstream stream is released when the last reference goes, not left leased forever."""

    __slots__ = ()

    def __init__(self, inner: Body) -> None:
        super().__init__(inner, inner.length, inner.close)
        self.trailers = inner.trailers

    def __del__(self) -> None:
        if self._close is not None:
            try:
                self.close()
            except Exception:  # noqa: BLE001 - never raise from a finaliser
                pass
