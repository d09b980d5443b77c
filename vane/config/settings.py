"""Typed daemon settings from ``VANE_*`` environment variables (DESIGN.md §2, §4, §7, §8, §9).

The OS environment wins over ``<config>/.env``. Every variable has a default and a check; a bad
value is an error naming the variable. The seed names ``FLOW_EXECUTION_TIMEOUT_SECS`` and
``EXTERNAL_PLUGIN_QUIET_PERIOD_SECS`` are accepted as aliases of their ``VANE_`` forms.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping

from vane.mgmt.token import DEFAULT_TOKEN_FILE, find_token

from .errors import CompileFailed, ConfigError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _int(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip(), 10)
        except ValueError:
            raise ValueError(f"expected an integer, got {raw!r}") from None
        if lo is not None and value < lo:
            raise ValueError(f"must be >= {lo}, got {value}")
        if hi is not None and value > hi:
            raise ValueError(f"must be <= {hi}, got {value}")
        return value
    return parse


def _float(lo: float = 0.0) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
        if value != value or value < lo:
            raise ValueError(f"must be a number >= {lo}, got {raw!r}")
        return value
    return parse


MAX_WORKERS = 256


def _workers(raw: str) -> int:
    """``auto`` -> the CPUs this process may run on; else a count from 1."""
    if raw.strip().lower() == "auto":
        return max(1, min(len(os.sched_getaffinity(0)), MAX_WORKERS))
    return _int(1, MAX_WORKERS)(raw)


def parse_bool(raw: str) -> bool | None:
    """``1 true yes on`` -> True, ``0 false no off`` and "" -> False (any case); else None."""
    low = raw.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    return None


def _bool(raw: str) -> bool:
    value = parse_bool(raw)
    if value is None:
        raise ValueError(f"expected 0/1 (or true/false), got {raw!r}")
    return value


def _str(raw: str) -> str | None:
    return raw if raw != "" else None


def _port_or_off(raw: str) -> int | None:
    if raw.strip() == "":
        return None
    return _int(1, 65535)(raw)


_HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*|\[[0-9a-f:.]+\]")


def _host_names(raw: str) -> tuple[str, ...]:
    """Comma-separated host names or IP addresses (IPv6 in brackets), without ports."""
    names = []
    for part in raw.split(","):
        name = part.strip().lower()
        if not name:
            continue
        if not _HOST_NAME.fullmatch(name) or len(name) > 253:
            raise ValueError(f"not a host name or IP address (no port, IPv6 in brackets): {part.strip()!r}")
        names.append(name)
    return tuple(names)


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        low = raw.strip().lower()
        if low not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {raw!r}")
        return low
    return parse


def _access_log(raw: str) -> str | None:
    """``off`` (or empty) -> None; ``stdout``; else an absolute file path."""
    value = raw.strip()
    if value.lower() in ("", "off"):
        return None
    if value.lower() == "stdout":
        return "stdout"
    if not os.path.isabs(value):
        raise ValueError(f"expected off, stdout or an absolute file path, got {raw!r}")
    return value


def _access_format(raw: str) -> str:
    """``combined``, ``json``, or a template of KV keys (parsed in ``from_env``, with the
    template limits)."""
    low = raw.strip().lower()
    if low in ("combined", "json"):
        return low
    if "{{" not in raw:
        raise ValueError(f"expected combined, json or a template with {{{{key}}}} placeholders, got {raw!r}")
    return raw


def _check_access_format(values: dict[str, Any]) -> None:
    fmt = values.get("access_log_format")
    if fmt is None or fmt in ("combined", "json"):
        return
    from vane.engine.template import Limits, TemplateError, parse

    limits = Limits(values.get("max_template_depth", 5), values.get("max_template_result_size", 65536),
                    values.get("max_template_parse_nodes", 50))
    try:
        parse(fmt, limits)
    except TemplateError as exc:
        raise CompileFailed([ConfigError(".env", "", f"VANE_ACCESS_LOG_FORMAT: bad template: {exc}")]) from None


# field name -> (env var, parser, default, alias)
_SPEC: dict[str, tuple[str, Callable[[str], Any], Any, str | None]] = {
    # engine (§4)
    "flow_execution_timeout": ("VANE_FLOW_EXECUTION_TIMEOUT_SECS", _float(0.001), 10.0, "FLOW_EXECUTION_TIMEOUT_SECS"),
    "external_plugin_quiet_period": ("VANE_EXTERNAL_PLUGIN_QUIET_PERIOD_SECS", _float(), 3.0,
                                     "EXTERNAL_PLUGIN_QUIET_PERIOD_SECS"),
    "max_template_depth": ("VANE_MAX_TEMPLATE_DEPTH", _int(1, 64), 5, None),
    "max_template_result_size": ("VANE_MAX_TEMPLATE_RESULT_SIZE", _int(1), 65536, None),
    "max_template_parse_nodes": ("VANE_MAX_TEMPLATE_PARSE_NODES", _int(1), 50, None),
    "max_body_size": ("VANE_MAX_BODY_SIZE", _int(0), 10 * 1024 * 1024, None),
    # files (§2)
    "state_dir": ("VANE_STATE_DIR", _str, "/var/lib/vaned", None),
    # lifecycle (§7)
    "bind_backoff_initial_ms": ("VANE_BIND_BACKOFF_INITIAL_MS", _int(1), 100, None),
    "bind_backoff_max_ms": ("VANE_BIND_BACKOFF_MAX_MS", _int(1), 5000, None),
    "bind_max_attempts": ("VANE_BIND_MAX_ATTEMPTS", _int(1), 10, None),
    "bind_ipv4": ("VANE_BIND_IPV4", _bool, True, None),
    "bind_ipv6": ("VANE_BIND_IPV6", _bool, True, None),
    "reload_debounce_ms": ("VANE_RELOAD_DEBOUNCE_MS", _int(0), 250, None),
    "drain_timeout": ("VANE_DRAIN_TIMEOUT_SECS", _float(), 30.0, None),
    "boot_health_timeout": ("VANE_BOOT_HEALTH_TIMEOUT_SECS", _float(), 60.0, None),
    "workers": ("VANE_WORKERS", _workers, 1, None),
    # security floor (§8)
    "sec_max_connections": ("VANE_SEC_MAX_CONNECTIONS", _int(1), 65536, None),
    "sec_max_connections_per_ip": ("VANE_SEC_MAX_CONNECTIONS_PER_IP", _int(1), 100, None),
    "sec_handshake_timeout": ("VANE_SEC_HANDSHAKE_TIMEOUT_SECS", _float(0.001), 10.0, None),
    "sec_header_timeout": ("VANE_SEC_HEADER_TIMEOUT_SECS", _float(0.001), 30.0, None),
    "sec_max_header_bytes": ("VANE_SEC_MAX_HEADER_BYTES", _int(1024), 65536, None),
    "sec_max_header_count": ("VANE_SEC_MAX_HEADER_COUNT", _int(1), 100, None),
    "sec_body_idle_timeout": ("VANE_SEC_BODY_IDLE_TIMEOUT_SECS", _float(0.001), 30.0, None),
    "sec_keepalive_timeout": ("VANE_SEC_KEEPALIVE_TIMEOUT_SECS", _float(0.001), 75.0, None),
    "sec_send_timeout": ("VANE_SEC_SEND_TIMEOUT_SECS", _float(0.001), 10.0, None),
    "sec_tls_handshakes_per_ip": ("VANE_SEC_TLS_HANDSHAKES_PER_IP", _int(0), 250, None),
    "sec_h2_max_streams": ("VANE_SEC_H2_MAX_STREAMS", _int(1), 100, None),
    "sec_h2_stream_window": ("VANE_SEC_H2_STREAM_WINDOW", _int(65535, (1 << 31) - 1), 1 << 20, None),
    "sec_h2_connection_window": ("VANE_SEC_H2_CONNECTION_WINDOW", _int(65535, (1 << 31) - 1), 4 << 20, None),
    "sec_max_uri_bytes": ("VANE_SEC_MAX_URI_BYTES", _int(256), 8192, None),
    "sec_quic_retry_threshold": ("VANE_SEC_QUIC_RETRY_THRESHOLD", _int(0), 100, None),
    # management (§9)
    "mgmt_unix": ("VANE_MGMT_UNIX", _str, None, None),
    "mgmt_group": ("VANE_MGMT_GROUP", _str, None, None),
    "mgmt_http_port": ("VANE_MGMT_HTTP_PORT", _port_or_off, 3333, None),
    "mgmt_http_token": ("VANE_MGMT_HTTP_TOKEN", _str, None, None),
    "mgmt_http_token_file": ("VANE_MGMT_HTTP_TOKEN_FILE", _str, DEFAULT_TOKEN_FILE, None),
    "mgmt_http_public": ("VANE_MGMT_HTTP_PUBLIC", _bool, False, None),
    "mgmt_http_host": ("VANE_MGMT_HTTP_HOST", _host_names, (), None),
    # observability
    "log_level": ("VANE_LOG_LEVEL", _choice("debug", "info", "warning", "error", "critical"), "info", None),
    "log_format": ("VANE_LOG_FORMAT", _choice("text", "json"), "text", None),
    "log_file": ("VANE_LOG_FILE", _str, None, None),
    "flow_log_file": ("VANE_FLOW_LOG_FILE", _str, None, None),
    "access_log": ("VANE_ACCESS_LOG", _access_log, None, None),
    "access_log_format": ("VANE_ACCESS_LOG_FORMAT", _access_format, "combined", None),
    "access_log_flush_ms": ("VANE_ACCESS_LOG_FLUSH_MS", _int(1, 60000), 1000, None),
    "access_log_buffer_bytes": ("VANE_ACCESS_LOG_BUFFER_BYTES", _int(65536), 1 << 20, None),
}


@dataclass(frozen=True)
class Settings:
    """Every ``VANE_*`` setting, typed. Build with :meth:`from_env`."""

    flow_execution_timeout: float = 10.0
    external_plugin_quiet_period: float = 3.0
    max_template_depth: int = 5
    max_template_result_size: int = 65536
    max_template_parse_nodes: int = 50
    max_body_size: int = 10 * 1024 * 1024
    state_dir: str | None = "/var/lib/vaned"
    bind_backoff_initial_ms: int = 100
    bind_backoff_max_ms: int = 5000
    bind_max_attempts: int = 10
    bind_ipv4: bool = True
    bind_ipv6: bool = True
    reload_debounce_ms: int = 250
    drain_timeout: float = 30.0
    boot_health_timeout: float = 60.0
    workers: int = 1
    sec_max_connections: int = 65536
    sec_max_connections_per_ip: int = 100
    sec_handshake_timeout: float = 10.0
    sec_header_timeout: float = 30.0
    sec_max_header_bytes: int = 65536
    sec_max_header_count: int = 100
    sec_body_idle_timeout: float = 30.0
    sec_keepalive_timeout: float = 75.0
    sec_send_timeout: float = 10.0
    sec_tls_handshakes_per_ip: int = 250   # 0: no limit
    sec_h2_max_streams: int = 100
    sec_h2_stream_window: int = 1 << 20
    sec_h2_connection_window: int = 4 << 20
    sec_max_uri_bytes: int = 8192
    sec_quic_retry_threshold: int = 100    # QUIC handshakes in progress before Retry; 0: always
    mgmt_unix: str | None = None
    mgmt_group: str | None = None
    mgmt_http_port: int | None = 3333
    mgmt_http_token: str | None = None
    mgmt_http_token_file: str | None = DEFAULT_TOKEN_FILE
    mgmt_http_public: bool = False
    mgmt_http_host: tuple[str, ...] = ()
    log_level: str = "info"
    log_format: str = "text"
    log_file: str | None = None
    flow_log_file: str | None = None
    access_log: str | None = None
    access_log_format: str = "combined"
    access_log_flush_ms: int = 1000
    access_log_buffer_bytes: int = 1 << 20

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Parse settings; raise CompileFailed listing every bad variable."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        errors: list[ConfigError] = []
        for name, (var, parse, _default, alias) in _SPEC.items():
            raw = env.get(var)
            source = var
            if raw is None and alias is not None:
                raw, source = env.get(alias), alias
            if raw is None:
                continue
            try:
                values[name] = parse(raw)
            except ValueError as exc:
                errors.append(ConfigError(".env", "", f"{source}: {exc}"))
        if errors:
            raise CompileFailed(errors)
        if values.get("mgmt_http_public") and values.get("mgmt_http_port", cls.mgmt_http_port) is not None:
            found = find_token(values.get("mgmt_http_token"),
                               values.get("mgmt_http_token_file", cls.mgmt_http_token_file))
            if found.token is None:
                raise CompileFailed([ConfigError(".env", "", f"VANE_MGMT_HTTP_PUBLIC=1 needs a token ({found.why}): "
                                                 "management over a public address without a token is refused")])
        _check_access_format(values)
        if values.get("bind_backoff_max_ms", cls.bind_backoff_max_ms) < values.get(
                "bind_backoff_initial_ms", cls.bind_backoff_initial_ms):
            raise CompileFailed([ConfigError(".env", "", "VANE_BIND_BACKOFF_MAX_MS: must be >= "
                                             "VANE_BIND_BACKOFF_INITIAL_MS")])
        return cls(**values)

    @staticmethod
    def variables() -> dict[str, str]:
        """Field name -> environment variable (for docs and `vaned --help`)."""
        return {name: spec[0] for name, spec in _SPEC.items()}


assert {f.name for f in fields(Settings)} == set(_SPEC), "Settings fields and _SPEC disagree"
