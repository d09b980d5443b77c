"""Start and stop the daemon's management endpoints from its settings (DESIGN.md §7, §9).

The daemon calls ``start_management(self)`` after binding listeners and ``stop()`` on the
returned object when it drains. A failure to start raises ``MgmtStartError`` with a message
fit for the operator (another daemon owns the socket, public HTTP without a token, ...).
"""

from __future__ import annotations

import logging

from vane.mgmt.api import DaemonAPI
from vane.mgmt.paths import server_socket_path
from vane.mgmt.server_http import HttpMgmtServer
from vane.mgmt.server_unix import MgmtStartError, UnixMgmtServer

__all__ = ["Management", "MgmtStartError", "start_management"]

log = logging.getLogger("vane.mgmt")


class Management:
    """The unix server and, when enabled, the HTTP server of one daemon."""

    def __init__(self, daemon: DaemonAPI) -> None:
        s = daemon.settings
        self.unix = UnixMgmtServer(daemon, getattr(s, "mgmt_unix", None) or server_socket_path(),
                                   group=getattr(s, "mgmt_group", None) or None)
        port = getattr(s, "mgmt_http_port", None)
        self.http: HttpMgmtServer | None = None
        if port is not None:
            self.http = HttpMgmtServer(daemon, port=int(port), token=getattr(s, "mgmt_http_token", None),
                                       public=bool(getattr(s, "mgmt_http_public", False)))

    def start(self) -> None:
        self.unix.start()
        if self.http is not None:
            try:
                self.http.start()
            except BaseException:
                self.unix.stop()
                raise

    def stop(self, timeout: float = 2.0) -> None:
        if self.http is not None:
            self.http.stop(timeout)
        self.unix.stop(timeout)


def start_management(daemon: DaemonAPI) -> Management:
    """Build and start both endpoints; raises MgmtStartError."""
    mgmt = Management(daemon)
    mgmt.start()
    return mgmt
