"""Start and stop the daemon's management endpoints from its settings (DESIGN.md §7, §9).

The daemon calls ``start_management(self)`` after binding listeners and ``stop()`` on the
returned object when it drains. A failure to start raises ``MgmtStartError`` with a message
fit for the operator (another daemon owns the socket, public HTTP without a token, ...).

HTTP management runs only when a token exists: ``VANE_MGMT_HTTP_TOKEN``, else the token file
(``VANE_MGMT_HTTP_TOKEN_FILE``, ``/etc/vaned/mgmt-http.token`` by default). Without one it is
off, and one log line says why. Both endpoints share a reserve of file descriptors, so they
keep answering when the process has run out of them.
"""

from __future__ import annotations

import logging

from vane.mgmt.api import DaemonAPI
from vane.mgmt.fds import FdReserve
from vane.mgmt.paths import server_socket_path
from vane.mgmt.server_http import HttpMgmtServer
from vane.mgmt.server_unix import MgmtStartError, UnixMgmtServer
from vane.mgmt.token import find_token

__all__ = ["Management", "MgmtStartError", "start_management"]

log = logging.getLogger("vane.mgmt")


class Management:
    """The unix server and, when a token exists, the HTTP server of one daemon, with the
    descriptor reserve they share."""

    def __init__(self, daemon: DaemonAPI) -> None:
        s = daemon.settings
        self.reserve = FdReserve()
        self.unix = UnixMgmtServer(daemon, getattr(s, "mgmt_unix", None) or server_socket_path(),
                                   group=getattr(s, "mgmt_group", None) or None, reserve=self.reserve)
        self.http: HttpMgmtServer | None = None
        port = getattr(s, "mgmt_http_port", None)
        if port is None:
            log.info("management HTTP is off (VANE_MGMT_HTTP_PORT is empty)")
            return
        found = find_token(getattr(s, "mgmt_http_token", None), getattr(s, "mgmt_http_token_file", None))
        public = bool(getattr(s, "mgmt_http_public", False))
        if found.token is None:
            if public:  # the settings refuse this at start; the file may have gone since
                log.error("management HTTP is off: VANE_MGMT_HTTP_PUBLIC=1 needs a token (%s)", found.why)
            else:
                log.log(logging.INFO if found.expected else logging.WARNING,
                        "management HTTP is off: no token (%s)", found.why)
            return
        self.http = HttpMgmtServer(daemon, port=int(port), token=found.token, public=public,
                                   public_names=getattr(s, "mgmt_http_host", ()) or (),
                                   token_source=found.source, reserve=self.reserve)

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
        self.reserve.close()


def start_management(daemon: DaemonAPI) -> Management:
    """Build and start both endpoints; raises MgmtStartError."""
    mgmt = Management(daemon)
    mgmt.start()
    return mgmt
