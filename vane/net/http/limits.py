"""The request limits of the security floor that every HTTP version checks the same way.

Each codec calls these at the point where it knows the size (a header block's field count,
the request target's length), so that one setting means one limit for HTTP/1.1, HTTP/2 and
HTTP/3 alike.
"""

from __future__ import annotations

from vane.net.http.errors import HttpError

__all__ = ["check_field_count", "check_target_length"]


def check_field_count(count: int, limit: int, section: str = "header") -> None:
    """431 when a header (or trailer) section holds more than ``limit`` fields."""
    if count > limit:
        raise HttpError(431, f"too many {section} fields")


def check_target_length(size: int, limit: int) -> None:
    """414 when the request target (HTTP/2 and HTTP/3: ``:path``) is longer than ``limit``."""
    if size > limit:
        raise HttpError(414, "request target too long")
