"""``static`` (DESIGN.md §6): answer from files under ``root`` into the response container.

Branches: ``success`` (a response is in the container: the file, a 206/304/416, a directory
listing, a redirect to the directory's slash form, or 405 for a method other than GET/HEAD on
an existing file), ``not_found`` (nothing to serve; the container is left alone so a later
node can fall back, e.g. to ``proxy``), ``failure`` (the file exists but cannot be read;
``error`` says why). Stored: ``file`` (the path served). Hidden names (a segment starting
with ``.``, except ``.well-known``) are never served. Path safety lives in
``vane.net.static_files``.
"""

from __future__ import annotations

import logging
import os

from vane.engine.plugin import HttpMiddleware, LinkEnv
from vane.net import static_files as sf
from vane.net.http.message import Body, Headers, Response
from vane.net.http.status import plain_response

log = logging.getLogger("vane.static")

NOT_FOUND = ("not_found", None)
_ROOT_CACHE = 64


class _NotFound(Exception):
    pass


class Static(HttpMiddleware):
    def __init__(self, node, env: LinkEnv) -> None:
        super().__init__(node, env)
        raw = node.input.raw
        self.config_dir = env.config_dir or "."
        self._roots: dict[str, str] = {}
        self.root = None if "{{" in raw["root"] else self._root(raw["root"])
        if self.root is not None and not os.path.isdir(self.root):
            log.warning("static root %s is not a directory (yet): requests will get not_found", self.root)
        index = raw.get("index", "index.html")
        self.index = [index] if isinstance(index, str) else list(index)
        for name in self.index:
            if sf.split_url_path(name) is None:
                raise ValueError(f"static: bad index name {name!r}")
        spa = raw.get("spa", False)
        self.spa: list[str] | None = None
        if spa is True:
            self.spa = sf.split_url_path(self.index[0] if self.index else "index.html")
        elif isinstance(spa, str) and spa:
            self.spa = sf.split_url_path(spa)
            if self.spa is None:
                raise ValueError(f"static: bad spa file {spa!r}")
        self.browse = bool(raw.get("browse", False))
        self.precompressed = bool(raw.get("precompressed", False))
        self.symlinks = bool(raw.get("symlinks", False))
        self.strip_prefix = (raw.get("strip_prefix") or "").rstrip("/")
        self.cache_control = raw.get("cache_control")

    def _root(self, root: str) -> str:
        real = self._roots.get(root)
        if real is None:
            path = root if os.path.isabs(root) else os.path.join(self.config_dir, root)
            real = sf.real_root(path)
            if len(self._roots) >= _ROOT_CACHE:
                self._roots.clear()
            self._roots[root] = real
        return real

    # -- request ---------------------------------------------------------------------------------

    def run(self, ctx, args):
        root = self.root if self.root is not None else self._root(args["root"])
        req = ctx.request
        path = req.path
        if self.strip_prefix:
            if path != self.strip_prefix and not path.startswith(self.strip_prefix + "/"):
                return NOT_FOUND
            path = path[len(self.strip_prefix):] or "/"
        segments = sf.split_url_path(path)
        if segments is None or any(s.startswith(".") and s != ".well-known" for s in segments):
            return NOT_FOUND
        try:
            return self._serve(ctx, root, path, segments)
        except _NotFound:
            return self._fallback(ctx, root)
        except PermissionError as exc:
            return self._failure(ctx, 403, f"permission denied: {exc.filename or path}")
        except OSError as exc:
            return self._failure(ctx, 500, f"{type(exc).__name__}: {exc.strerror or exc}")

    def _serve(self, ctx, root: str, path: str, segments: list[str]):
        real = sf.resolve(root, segments, self.symlinks)
        if real is None:
            raise _NotFound
        st = _stat(real)
        if sf.is_dir(st):
            if not path.endswith("/"):
                return self._redirect_slash(ctx)
            for name in self.index:
                candidate = sf.resolve(root, segments + [name], self.symlinks)
                if candidate is None:
                    continue
                try:
                    ist = os.stat(candidate)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                if sf.is_regular(ist):
                    return self._file(ctx, root, candidate, ist)
            if self.browse:
                return self._listing(ctx, root, path, real)
            raise _NotFound
        if not sf.is_regular(st):
            raise _NotFound
        return self._file(ctx, root, real, st)

    def _fallback(self, ctx, root: str):
        if self.spa is None or ctx.request.method not in ("GET", "HEAD"):
            return NOT_FOUND
        real = sf.resolve(root, self.spa, self.symlinks)
        if real is None:
            return NOT_FOUND
        try:
            st = _stat(real)
        except _NotFound:
            return NOT_FOUND
        if not sf.is_regular(st):
            return NOT_FOUND
        return self._file(ctx, root, real, st)

    def _failure(self, ctx, status: int, message: str):
        ctx.fail_status = status
        ctx.trajectory.note_error(f"static: {message}")
        return "failure", {"error": message}

    # -- answers ---------------------------------------------------------------------------------

    def _redirect_slash(self, ctx):
        req = ctx.request
        # a path, never a scheme-relative URL ("//host/..."): a browser would go to another host
        location = "/" + req.path.lstrip("/\\") + "/" + (f"?{req.query}" if req.query else "")
        ctx.response = plain_response(301, "", {"location": location})
        return "success", None

    def _listing(self, ctx, root: str, path: str, real: str):
        if ctx.request.method not in ("GET", "HEAD"):
            return self._not_allowed(ctx, real)
        text = sf.listing(ctx.request.path, real, self.symlinks, root)
        ctx.response = plain_response(200, text, {"cache-control": "no-cache"},
                                       "text/html; charset=utf-8")
        return "success", {"file": real}

    def _not_allowed(self, ctx, real: str):
        ctx.response = plain_response(405, None, {"allow": "GET, HEAD"})
        return "success", {"file": real}

    def _file(self, ctx, root: str, real: str, st):
        req = ctx.request
        if req.method not in ("GET", "HEAD"):
            return self._not_allowed(ctx, real)
        headers = req.headers
        served, sst, coding = real, st, None
        if self.precompressed:
            served, sst, coding = self._variant(headers.get("accept-encoding"), real, st)
        tag = sf.etag(sst)
        out = Headers()
        items = out.items_
        items.append((b"content-type", sf.content_type(real).encode("latin-1")))
        items.append((b"etag", tag.encode("latin-1")))
        items.append((b"last-modified", sf.last_modified(sst).encode("latin-1")))
        if self.cache_control:
            items.append((b"cache-control", str(self.cache_control).encode("latin-1")))
        if self.precompressed:
            items.append((b"vary", b"Accept-Encoding"))
        if coding is not None:
            items.append((b"content-encoding", coding.encode("latin-1")))
        if sf.not_modified(headers, sst, tag):
            out.items_ = [kv for kv in items if kv[0] not in (b"content-type", b"content-encoding")]
            ctx.response = Response(304, out, Body.empty())
            return "success", {"file": served}
        items.append((b"accept-ranges", b"bytes"))
        size = sst.st_size
        status, offset, length = 200, 0, size
        rng = sf.byte_range(headers.get("range"), size)
        if rng is not None and sf.if_range_ok(headers, tag, sst):
            if rng == "unsatisfiable":
                ctx.response = plain_response(416, None, {"content-range": f"bytes */{size}"})
                return "success", {"file": served}
            first, last = rng
            status, offset, length = 206, first, last - first + 1
            items.append((b"content-range", f"bytes {first}-{last}/{size}".encode("latin-1")))
        if req.method == "HEAD":
            body = Body((), length)
        else:
            body = sf.file_body(served, offset, length)
        ctx.response = Response(status, out, body)
        return "success", {"file": served}

    def _variant(self, accept_encoding: str | None, real: str, st):
        if accept_encoding:
            for suffix, coding in ((".br", "br"), (".gz", "gzip")):
                if not sf.accepts(accept_encoding, coding):
                    continue
                try:
                    vst = os.lstat(real + suffix)
                except OSError:
                    continue
                if sf.is_regular(vst):
                    return real + suffix, vst, coding
        return real, st, None


def _stat(path: str):
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise _NotFound from None
