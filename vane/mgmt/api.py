"""The daemon as the management layer sees it (DESIGN.md §9).

``vane/mgmt`` never imports ``vane/daemon``: the daemon implements ``DaemonAPI`` and passes
itself to the management servers. Tests use a fake with canned state.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from vane.observe.flowlog import FlowLog
from vane.observe.hub import Hub
from vane.observe.metrics import Metrics

__all__ = ["DaemonAPI", "Settings"]


class Settings(Protocol):
    """The settings attributes the management layer reads."""

    mgmt_unix: str | None          # socket path; None = default (paths.server_socket_path)
    mgmt_group: str | None         # chgrp the socket to this group
    mgmt_http_port: int | None     # None = HTTP management disabled
    mgmt_http_token: str | None
    mgmt_http_token_file: str | None  # read when mgmt_http_token is unset; None = no file
    mgmt_http_public: bool
    mgmt_http_host: tuple[str, ...]  # Host names accepted besides loopback when public
    log_level: str
    log_file: str | None
    log_format: str                # "text" | "json"
    flow_log_file: str | None


@runtime_checkable
class DaemonAPI(Protocol):
    """What the management verbs call. Every method returns JSON-serialisable data."""

    settings: Any
    flow_log: FlowLog
    log_hub: Hub
    metrics: Metrics

    def stats(self) -> dict:
        """uptime_secs, version, graph_hash, last_reload {time, result, error},
        listeners {state: count}, connections {active, total}."""
        ...

    def reload(self) -> dict:
        """{"status": "reloaded"|"unchanged", "hash": str}; raises CompileFailed."""
        ...

    def shutdown(self) -> None:
        """Start the drain (as SIGTERM) and return at once."""
        ...

    def compile_dry_run(self, dir: str) -> dict:
        """{"hash", "listeners": [...], "trees": {...}}; raises CompileFailed."""
        ...

    def get_config(self) -> dict:
        """{"hash", "config": {...}, "rules": [...], "trees": {...}}."""
        ...

    def get_listeners(self) -> list[dict]:
        """address, transport, state, bind_attempts, last_error, connections."""
        ...

    def get_connections(self) -> list[dict]:
        """id, remote, local, listener, rule, node, layer, bytes_in, bytes_out, age_secs."""
        ...

    def get_plugins(self) -> list[dict]:
        """name, driver, branches, breaker {state, failures, open_until}."""
        ...

    def get_upstreams(self) -> list[dict]:
        """upstream, idle, active, max_idle, max_active."""
        ...

    def get_upstream_groups(self) -> list[dict]:
        """One row per backend of every upstream group served: group, backend, state
        (up/down/draining/disabled), admin, weight, backup, active, balance, health, last_check,
        latency_ms, check, error, check_failures, check_successes, checks, failures, ejected_secs."""
        ...

    def set_upstream(self, group: str, backend: str, action: str) -> dict:
        """``action`` "drain" | "disable" | "enable" on one backend; {"group", "backend",
        "state", "previous"}; raises LookupError for an unknown group or backend."""
        ...

    def get_certs(self) -> list[dict]:
        """path, subject, sans, not_after, listeners."""
        ...

    def set_flow_log(self, level: str) -> dict:
        """level "trajectory"|"debug"; returns {"level": level}."""
        ...

    def reopen_logs(self) -> dict:
        """Open the access log file again (every worker): {"access_log": path or None,
        "reopened": bool}; raises OSError when the path cannot be opened."""
        ...
