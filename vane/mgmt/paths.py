"""Where the management socket lives (DESIGN.md §2).

Server: ``VANE_MGMT_UNIX``, else ``$XDG_RUNTIME_DIR/vaned.sock``, else ``/run/vaned/vaned.sock``.
Client: the same order, then the seed's ``/var/run/vaned.sock``.
"""

from __future__ import annotations

import os
from typing import Mapping

__all__ = ["DEFAULT_SOCKET", "LEGACY_SOCKET", "client_socket_paths", "server_socket_path"]

DEFAULT_SOCKET = "/run/vaned/vaned.sock"
LEGACY_SOCKET = "/var/run/vaned.sock"


def server_socket_path(env: Mapping[str, str] | None = None) -> str:
    """The path vaned binds."""
    env = os.environ if env is None else env
    if env.get("VANE_MGMT_UNIX"):
        return env["VANE_MGMT_UNIX"]
    if env.get("XDG_RUNTIME_DIR"):
        return os.path.join(env["XDG_RUNTIME_DIR"], "vaned.sock")
    return DEFAULT_SOCKET


def client_socket_paths(env: Mapping[str, str] | None = None) -> list[str]:
    """The paths vane tries, in order, without duplicates."""
    env = os.environ if env is None else env
    out: list[str] = []
    for path in (
        env.get("VANE_MGMT_UNIX") or None,
        os.path.join(env["XDG_RUNTIME_DIR"], "vaned.sock") if env.get("XDG_RUNTIME_DIR") else None,
        DEFAULT_SOCKET,
        LEGACY_SOCKET,
    ):
        if path and path not in out:
            out.append(path)
    return out
