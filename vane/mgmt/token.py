"""The HTTP management token: from ``VANE_MGMT_HTTP_TOKEN`` or a token file (DESIGN.md §9).

The Debian package generates ``/etc/vaned/mgmt-http.token`` (``root:vaneadm``, mode 0640) on
install; vaned and ``vane --http`` read it when the environment holds no token. The file is
read with a bound, only when it is a regular file; surrounding whitespace is stripped. An
empty, oversized, unreadable or missing file is no token, and ``TokenFile.problem`` says why.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

__all__ = ["DEFAULT_TOKEN_FILE", "MAX_TOKEN_BYTES", "TOKEN_ENV", "TOKEN_FILE_ENV", "FoundToken", "TokenFile",
           "find_token", "read_token_file"]

DEFAULT_TOKEN_FILE = "/etc/vaned/mgmt-http.token"
TOKEN_ENV = "VANE_MGMT_HTTP_TOKEN"
TOKEN_FILE_ENV = "VANE_MGMT_HTTP_TOKEN_FILE"
MAX_TOKEN_BYTES = 4096


@dataclass(frozen=True)
class TokenFile:
    """What a token file yielded: the token, or ``None`` and the reason (``problem``)."""

    path: str
    token: str | None
    problem: str | None = None   # "was not found", "is empty", "cannot be read: ...", ...

    @property
    def missing(self) -> bool:
        return self.problem == "was not found"


@dataclass(frozen=True)
class FoundToken:
    """The token and where it came from (an environment variable or a file path); without
    one, ``why`` names both places, and ``expected`` is True when that is the plain case of
    no token configured anywhere (no file at the path) rather than a broken file."""

    token: str | None
    source: str
    why: str | None = None
    expected: bool = False


def read_token_file(path: str) -> TokenFile:
    """Read the token in ``path``; never raises for a bad or missing file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return TokenFile(path, None, "was not found")
        return TokenFile(path, None, f"cannot be read: {e.strerror or e}")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return TokenFile(path, None, "is not a regular file")
        data = os.read(fd, MAX_TOKEN_BYTES + 1)
    except OSError as e:
        return TokenFile(path, None, f"cannot be read: {e.strerror or e}")
    finally:
        os.close(fd)
    if len(data) > MAX_TOKEN_BYTES:
        return TokenFile(path, None, f"is larger than {MAX_TOKEN_BYTES} bytes")
    token = data.strip()
    if not token:
        return TokenFile(path, None, "is empty")
    if any(b < 0x21 or b > 0x7E for b in token):
        return TokenFile(path, None, "holds characters other than printable ASCII")
    return TokenFile(path, token.decode("ascii"))


def find_token(value: str | None, path: str | None, token_env: str = TOKEN_ENV) -> FoundToken:
    """The token from ``value`` (the content of ``token_env``), else from the file at ``path``
    (None or "": no token file)."""
    if value:
        return FoundToken(value, token_env)
    if not path:
        return FoundToken(None, token_env, f"{token_env} is unset and {TOKEN_FILE_ENV} is empty", expected=True)
    found = read_token_file(path)
    if found.token is not None:
        return FoundToken(found.token, found.path)
    return FoundToken(None, found.path, f"{token_env} is unset and the token file {found.path} {found.problem}",
                      expected=found.missing)
