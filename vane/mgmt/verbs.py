"""The management verb table: argument validation and dispatch to the daemon (DESIGN.md §9).

``dispatch(daemon, request)`` returns either a plain result (answered with one response
frame) or a ``Stream`` (answered with stream frames until it ends). Every failure leaves as
a ``MgmtError`` with a kind; unexpected exceptions become ``Internal`` and are logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import vane
from vane.config.errors import CompileFailed
from vane.mgmt.api import DaemonAPI
from vane.mgmt.protocol import (
    BAD_REQUEST,
    COMPILE,
    INTERNAL,
    UNAVAILABLE,
    UNKNOWN_VERB,
    MgmtError,
    Request,
)
from vane.observe.hub import Subscription

__all__ = ["VERBS", "Arg", "Stream", "Verb", "compile_error", "dispatch", "validate_args"]

log = logging.getLogger("vane.mgmt")

STREAM_QUEUE = 1000  # per-subscriber queue; past it the reader gets {"dropped": N}


@dataclass(frozen=True)
class Arg:
    name: str
    type: type
    required: bool = False
    default: Any = None
    choices: tuple | None = None
    min: int | None = None
    max: int | None = None


@dataclass(frozen=True)
class Verb:
    name: str
    handler: Callable[[DaemonAPI, dict], Any]
    args: tuple[Arg, ...] = ()
    stream: bool = False
    help: str = ""


@dataclass
class Stream:
    """A live stream: replay ``backlog`` first, then follow ``subscription``."""

    subscription: Subscription
    backlog: list = field(default_factory=list)


def validate_args(verb: Verb, args: dict[str, Any]) -> dict[str, Any]:
    """Check types, choices and ranges; fill defaults; reject unknown args (BadRequest)."""
    known = {a.name: a for a in verb.args}
    unknown = sorted(set(args) - set(known))
    if unknown:
        raise MgmtError(BAD_REQUEST, f"{verb.name}: unknown argument(s): {', '.join(unknown)}")
    out: dict[str, Any] = {}
    for a in verb.args:
        if a.name not in args or args[a.name] is None:
            if a.required:
                raise MgmtError(BAD_REQUEST, f"{verb.name}: missing argument {a.name!r}")
            out[a.name] = a.default
            continue
        value = args[a.name]
        if not isinstance(value, a.type) or (a.type is int and isinstance(value, bool)):
            raise MgmtError(BAD_REQUEST, f"{verb.name}: {a.name!r} must be of type {a.type.__name__}")
        if a.type is str and not value:
            raise MgmtError(BAD_REQUEST, f"{verb.name}: {a.name!r} must not be empty")
        if a.choices is not None and value not in a.choices:
            raise MgmtError(BAD_REQUEST, f"{verb.name}: {a.name!r} must be one of {', '.join(a.choices)}")
        if a.min is not None and value < a.min or a.max is not None and value > a.max:
            raise MgmtError(BAD_REQUEST, f"{verb.name}: {a.name!r} must be in [{a.min}, {a.max}]")
        out[a.name] = value
    return out


def compile_error(exc: CompileFailed) -> MgmtError:
    """A Compile error naming the first problem's file and path, with ``errors`` listing all."""
    errors = [e.to_dict() for e in exc.errors]
    if not errors:
        return MgmtError(COMPILE, str(exc) or "compile failed", file="", path="", errors=[])
    first = errors[0]
    message = first["message"] if len(errors) == 1 else f"{first['message']} (and {len(errors) - 1} more)"
    return MgmtError(COMPILE, message, file=first["file"], path=first["path"], errors=errors)


# handlers -----------------------------------------------------------------------------
def _ping(d: DaemonAPI, a: dict) -> dict:
    return {"pong": True, "version": vane.__version__}


def _shutdown(d: DaemonAPI, a: dict) -> dict:
    d.shutdown()
    return {"status": "draining"}


def _metrics(d: DaemonAPI, a: dict) -> dict:
    if a["format"] == "json":
        return {"format": "json", **d.metrics.as_json()}
    return {"format": "prometheus", "text": d.metrics.render_prometheus().decode()}


def _set_flow_log(d: DaemonAPI, a: dict) -> dict:
    return d.set_flow_log(a["level"])


def _subscribe(hub_owner: Any) -> Subscription:
    try:
        return hub_owner.subscribe(STREAM_QUEUE)
    except OverflowError as e:
        raise MgmtError(UNAVAILABLE, str(e)) from None


def _tail_flow(d: DaemonAPI, a: dict) -> Stream:
    backlog = d.flow_log.recent(a["backlog"]) if a["backlog"] else []
    return Stream(_subscribe(d.flow_log), backlog)


def _tail_log(d: DaemonAPI, a: dict) -> Stream:
    return Stream(_subscribe(d.log_hub))


def _upstreams(d: DaemonAPI, a: dict) -> dict:
    return {"upstreams": d.get_upstreams(), "groups": d.get_upstream_groups()}


def _set_upstream(d: DaemonAPI, a: dict) -> dict:
    try:
        return d.set_upstream(a["group"], a["backend"], a["state"])
    except LookupError as e:
        raise MgmtError(BAD_REQUEST, f"set_upstream: {e.args[0] if e.args else e}") from None


def _reopen_logs(d: DaemonAPI, a: dict) -> dict:
    try:
        return d.reopen_logs()
    except OSError as e:
        raise MgmtError(UNAVAILABLE, f"reopen_logs: {e}") from None


def _listed(key: str, method: str) -> Callable[[DaemonAPI, dict], dict]:
    def handler(d: DaemonAPI, a: dict) -> dict:
        return {key: getattr(d, method)()}

    handler.__name__ = f"_{method}"
    return handler


_VERBS = [
    Verb("ping", _ping, help="check the daemon answers"),
    Verb("stats", lambda d, a: d.stats(), help="uptime, graph hash, last reload, counts"),
    Verb("reload", lambda d, a: d.reload(), help="recompile the config and swap the graph"),
    Verb("shutdown", _shutdown, help="drain and exit (as SIGTERM)"),
    Verb("compile_dry_run", lambda d, a: d.compile_dry_run(a["dir"]),
         (Arg("dir", str, required=True),), help="compile a config directory without applying it"),
    Verb("get_config", lambda d, a: d.get_config(), help="the running config, rules and trees"),
    Verb("get_listeners", _listed("listeners", "get_listeners")),
    Verb("get_connections", _listed("connections", "get_connections")),
    Verb("get_metrics", _metrics,
         (Arg("format", str, default="prometheus", choices=("prometheus", "json")),)),
    Verb("get_plugins", _listed("plugins", "get_plugins")),
    Verb("get_upstreams", _upstreams, help="the connection pool per endpoint, and every upstream group's backends"),
    Verb("set_upstream", _set_upstream,
         (Arg("group", str, required=True), Arg("backend", str, required=True),
          Arg("state", str, required=True, choices=("drain", "disable", "enable"))),
         help="drain, disable or enable one backend of an upstream group (until a reload changes the group)"),
    Verb("get_certs", _listed("certs", "get_certs")),
    Verb("set_flow_log", _set_flow_log,
         (Arg("level", str, required=True, choices=("trajectory", "debug")),)),
    Verb("tail_flow", _tail_flow, (Arg("backlog", int, default=0, min=0, max=1000),), stream=True),
    Verb("tail_log", _tail_log, stream=True),
    Verb("reopen_logs", _reopen_logs, help="open the access log file again, after logrotate moved it (as SIGUSR1)"),
]
VERBS: dict[str, Verb] = {v.name: v for v in _VERBS}


def dispatch(daemon: DaemonAPI, request: Request) -> Any:
    """Run one request; returns the result or a Stream; raises MgmtError."""
    verb = VERBS.get(request.verb)
    if verb is None:
        raise MgmtError(UNKNOWN_VERB, f"unknown verb {request.verb[:64]!r}", verbs=sorted(VERBS))
    args = validate_args(verb, request.args)
    try:
        return verb.handler(daemon, args)
    except MgmtError:
        raise
    except CompileFailed as e:
        raise compile_error(e) from None
    except Exception as e:
        log.exception("management verb failed", extra={"verb": verb.name})
        raise MgmtError(INTERNAL, f"{verb.name} failed: {type(e).__name__}: {e}") from None
