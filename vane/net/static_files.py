"""Serving files from a directory for the ``static`` plugin (DESIGN.md §6).

- ``resolve``: URL path -> file path under the root, or None. Traversal is impossible: the
  path is percent-decoded once, NUL, backslashes, encoded slashes and ``..`` segments are
  refused, and the result is resolved with ``realpath`` and checked to lie inside the root.
  Without ``symlinks`` any symbolic link on the way is refused; with it, links may point
  anywhere inside the root.
- validators: a weak ETag from size and mtime, Last-Modified; ``If-None-Match`` /
  ``If-Modified-Since`` -> 304.
- ``Range``: one range -> 206 with Content-Range, unsatisfiable -> 416, several -> the full
  200 (allowed by RFC 9110 §14.2), ``If-Range`` honoured.
- bodies stream from the open file in 64 KiB reads; the file is closed when the body ends
  or is dropped.
- ``listing``: an HTML directory index with every name escaped.
"""

from __future__ import annotations

import html
import mimetypes
import os
import stat
from email.utils import formatdate, parsedate_to_datetime
from urllib.parse import quote, unquote

from vane.net.http.message import Body, FileBody

MAX_LISTING = 10000
_TEXT_TYPES = ("application/javascript", "application/json", "application/xml", "image/svg+xml",
               "application/manifest+json")

mimetypes.add_type("text/javascript", ".mjs")
mimetypes.add_type("application/manifest+json", ".webmanifest")
mimetypes.add_type("image/webp", ".webp")
mimetypes.add_type("font/woff2", ".woff2")
mimetypes.add_type("application/wasm", ".wasm")


def real_root(root: str) -> str:
    return os.path.realpath(root)


def split_url_path(path: str) -> list[str] | None:
    """The decoded, safe segments of a URL path, or None when it must be refused."""
    low = path.lower()
    if "%2f" in low or "%5c" in low or "%00" in low:
        return None
    try:
        decoded = unquote(path, errors="strict") if "%" in path else path
    except UnicodeDecodeError:      # not UTF-8: no file is named so
        return None
    if "\0" in decoded or "\\" in decoded:
        return None
    segments = []
    for seg in decoded.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            return None
        segments.append(seg)
    return segments


def inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def resolve(root: str, segments: list[str], symlinks: bool) -> str | None:
    """The real path for ``segments`` under ``root`` (already real), or None if not allowed.

    The path need not exist. Without ``symlinks``, any link on the way disqualifies it.
    """
    candidate = os.path.join(root, *segments) if segments else root
    real = os.path.realpath(candidate)
    if not inside(root, real):
        return None
    if not symlinks and real != os.path.normpath(candidate):
        return None
    return real


def etag(st: os.stat_result) -> str:
    return f'W/"{st.st_size:x}-{st.st_mtime_ns:x}"'


def last_modified(st: os.stat_result) -> str:
    return formatdate(st.st_mtime, usegmt=True)


def _etag_matches(header: str, tag: str) -> bool:
    """Weak comparison (RFC 9110 §8.8.3.2) against a list of entity tags or ``*``."""
    if header.strip() == "*":
        return True
    opaque = tag[2:] if tag.startswith("W/") else tag
    for item in header.split(","):
        item = item.strip()
        if item.startswith("W/"):
            item = item[2:]
        if item == opaque:
            return True
    return False


def not_modified(headers, st: os.stat_result, tag: str) -> bool:
    """True when the client's validators say its copy is current (-> 304)."""
    inm = headers.get("if-none-match")
    if inm is not None:
        return _etag_matches(inm, tag)
    ims = headers.get("if-modified-since")
    if ims:
        try:
            since = parsedate_to_datetime(ims).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return False
        return int(st.st_mtime) <= since
    return False


def byte_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """Parse ``Range``: (first, last) for one satisfiable range, "unsatisfiable", or None
    (absent, malformed, not bytes, or several ranges: answer the whole file)."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or not spec or "," in spec:
        return None
    first_s, dash, last_s = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first_s == "":
            suffix = int(last_s)
            if suffix <= 0:
                return "unsatisfiable"
            return (max(0, size - suffix), size - 1) if size else "unsatisfiable"
        first = int(first_s)
        last = int(last_s) if last_s else size - 1
    except ValueError:
        return None
    if first < 0 or (last_s and last < first):
        return None
    if first >= size:
        return "unsatisfiable"
    return first, min(last, size - 1)


def if_range_ok(headers, tag: str, st: os.stat_result) -> bool:
    """``If-Range``: use the range only if the validator still matches (strong for ETags)."""
    value = headers.get("if-range")
    if value is None:
        return True
    value = value.strip()
    if value.startswith('"') or value.startswith("W/"):
        return False if value.startswith("W/") or tag.startswith("W/") else value == tag
    try:
        return int(st.st_mtime) <= parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return False


def content_type(path: str) -> str:
    ctype, _ = mimetypes.guess_type(path, strict=False)
    if ctype is None:
        return "application/octet-stream"
    if ctype.startswith("text/") or ctype in _TEXT_TYPES:
        return ctype + "; charset=utf-8"
    return ctype


def file_body(path: str, offset: int, length: int) -> Body:
    """A body streaming ``length`` bytes of ``path`` from ``offset`` (sent with ``sendfile``
    where the connection allows); the file closes at the end."""
    return FileBody(open(path, "rb", buffering=0), offset, length)


def accepts(accept_encoding: str | None, coding: str) -> bool:
    """Whether ``Accept-Encoding`` allows ``coding`` (q=0 refuses; ``*`` counts)."""
    if not accept_encoding:
        return False
    star = None
    for item in accept_encoding.split(","):
        name, _, params = item.strip().partition(";")
        name = name.strip().lower()
        q = 1.0
        for p in params.split(";"):
            k, _, v = p.strip().partition("=")
            if k.strip().lower() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        if name == coding:
            return q > 0
        if name == "*":
            star = q > 0
    return bool(star)


def listing(url_path: str, directory: str, symlinks: bool, root: str) -> str:
    """An HTML index of ``directory``; names are escaped, links percent-encoded."""
    entries = []
    try:
        with os.scandir(directory) as it:
            for entry in it:
                if len(entries) >= MAX_LISTING:
                    break
                if entry.name.startswith("."):
                    continue
                try:
                    if entry.is_symlink():
                        if not symlinks or not inside(root, os.path.realpath(entry.path)):
                            continue
                    is_dir = entry.is_dir()
                    st = entry.stat()
                except OSError:
                    continue
                entries.append((not is_dir, entry.name, is_dir, st.st_size, st.st_mtime))
    except OSError:
        raise
    entries.sort()
    title = html.escape(unquote(url_path))
    rows = []
    if url_path.rstrip("/"):
        rows.append('<tr><td><a href="../">../</a></td><td></td><td></td></tr>')
    for _, name, is_dir, size, mtime in entries:
        href = quote(name) + ("/" if is_dir else "")
        label = html.escape(name) + ("/" if is_dir else "")
        shown = "-" if is_dir else str(size)
        rows.append(f'<tr><td><a href="{html.escape(href)}">{label}</a></td><td>{shown}</td>'
                    f"<td>{formatdate(mtime, usegmt=True)}</td></tr>")
    return ("<!doctype html><meta charset=\"utf-8\"><title>Index of " + title + "</title>"
            "<h1>Index of " + title + "</h1><table><tr><th>Name</th><th>Size</th><th>Modified</th></tr>"
            + "".join(rows) + "</table>\n")


def is_regular(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode)


def is_dir(st: os.stat_result) -> bool:
    return stat.S_ISDIR(st.st_mode)
