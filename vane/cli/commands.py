"""The vane commands, shared by the command line and ``vane shell`` (DESIGN.md §10).

``run(args, ctx)`` takes docopt's parsed arguments and returns the exit code: 0 ok, 1 the
daemon (or the offline compiler) answered with an error, 2 the daemon could not be reached.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

from vane.cli import render
from vane.mgmt.client import Client, DaemonError, Unreachable

__all__ = ["EXIT_DAEMON_ERROR", "EXIT_OK", "EXIT_UNREACHABLE", "EXIT_USAGE", "GET_TARGETS", "UPSTREAM_ACTIONS",
           "Context", "run"]

EXIT_OK = 0
EXIT_DAEMON_ERROR = 1
EXIT_UNREACHABLE = 2
EXIT_USAGE = 64

GET_TARGETS = ("config", "listeners", "connections", "metrics", "plugins", "upstreams", "certs")
UPSTREAM_ACTIONS = ("drain", "disable", "enable")
SLOW_VERB_TIMEOUT = 60.0  # reload / compile_dry_run compile the whole config


@dataclass
class Context:
    """Where a command talks to and writes to."""

    client_factory: Callable[[], Client]
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    json: bool = False
    tty: bool = False
    confirm: Callable[[str], bool] | None = None  # asked before shutdown (the shell sets it)
    _client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = self.client_factory()
        return self._client

    def close(self) -> None:
        """Drop the connection (the next command reconnects)."""
        if self._client is not None:
            self._client.close()

    def print(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def error(self, text: str) -> None:
        self.err.write(text + "\n")
        self.err.flush()


def run(args: dict[str, Any], ctx: Context) -> int:
    """Run the command selected in ``args``; daemon errors and unreachability become exit codes."""
    try:
        return _select(args)(args, ctx)
    except DaemonError as e:
        return _daemon_error(ctx, e)
    except Unreachable as e:
        ctx.error(f"vane: vaned is not reachable: {e}")
        return EXIT_UNREACHABLE


def _select(args: dict[str, Any]) -> Callable[[dict, Context], int]:
    for name in ("ping", "stats", "reload", "shutdown", "reopen-logs", "compile", "get", "tail", "upstream"):
        if args.get(name):
            return _COMMANDS[name]
    raise ValueError("no command selected")


def _daemon_error(ctx: Context, e: DaemonError) -> int:
    if ctx.json:
        ctx.print(render.to_json({"error": e.error}))
        return EXIT_DAEMON_ERROR
    if e.kind == "Compile":
        for err in e.error.get("errors") or [e.error]:
            ctx.error(render.compile_error_line(err))
    else:
        ctx.error(f"vane: {e.kind}: {e.message}")
    return EXIT_DAEMON_ERROR


# commands -------------------------------------------------------------------------------
def cmd_ping(args: dict, ctx: Context) -> int:
    start = time.monotonic()
    result = ctx.client.call("ping")
    ms = (time.monotonic() - start) * 1000
    if ctx.json:
        ctx.print(render.to_json({**result, "ms": round(ms, 3)}))
    else:
        ctx.print(f"pong from vaned {result.get('version', '?')} at {ctx.client.address} ({ms:.1f} ms)")
    return EXIT_OK


def cmd_stats(args: dict, ctx: Context) -> int:
    s = ctx.client.call("stats")
    if ctx.json:
        ctx.print(render.to_json(s))
        return EXIT_OK
    last = s.get("last_reload") or {}
    when = last.get("time")
    last_text = str(last.get("result", "-"))
    if isinstance(when, (int, float)):
        last_text += f" {render.duration(time.time() - when)} ago"
    if last.get("error"):
        last_text += f" ({last['error']})"
    listeners = s.get("listeners") or {}
    conns = s.get("connections") or {}
    pairs = [
        ("version", s.get("version")),
        ("uptime", render.duration(s.get("uptime_secs"))),
        ("graph", s.get("graph_hash")),
        ("last reload", last_text),
        ("listeners", ", ".join(f"{n} {state}" for state, n in listeners.items()) or "none"),
        ("connections", f"{conns.get('active', 0)} active, {conns.get('total', 0)} total"),
    ]
    hits = s.get("floor_hits")
    if isinstance(hits, dict):
        pairs.append(("security floor", ", ".join(f"{limit} {n}" for limit, n in sorted(hits.items()))
                      or "no refusals"))
    access = s.get("access_log")
    if isinstance(access, dict):
        pairs.append(("access log", f"{access.get('destination')}: {access.get('lines', 0)} lines, "
                                    f"{access.get('dropped', 0)} dropped"))
    ctx.print(render.keyvals(pairs, ctx.tty))
    return EXIT_OK


def cmd_reload(args: dict, ctx: Context) -> int:
    result = ctx.client.call("reload", timeout=SLOW_VERB_TIMEOUT)
    if ctx.json:
        ctx.print(render.to_json(result))
    else:
        ctx.print(f"{result.get('status')} {result.get('hash')}")
        for lst in result.get("not_bound") or ():
            ctx.error(f"warning: listener {lst.get('listener')} is not bound ({lst.get('state')}): "
                      f"{lst.get('error') or 'binding'}")
    return EXIT_OK


def cmd_shutdown(args: dict, ctx: Context) -> int:
    if ctx.confirm is not None and not ctx.confirm(f"Shut down vaned at {ctx.client.address}? [y/N] "):
        ctx.print("not shutting down")
        return EXIT_OK
    result = ctx.client.call("shutdown")
    ctx.print(render.to_json(result) if ctx.json else "vaned is draining and will exit")
    return EXIT_OK


def cmd_reopen_logs(args: dict, ctx: Context) -> int:
    result = ctx.client.call("reopen_logs")
    if ctx.json:
        ctx.print(render.to_json(result))
    elif result.get("reopened"):
        ctx.print(f"reopened {result.get('access_log')}")
    else:
        ctx.print("no access log file (VANE_ACCESS_LOG is off)")
    return EXIT_OK


def cmd_compile(args: dict, ctx: Context) -> int:
    path = args["<path>"]
    if args.get("--daemon"):
        if args.get("--config"):
            ctx.error("vane: --config is not used with --daemon (the daemon compiles a config directory)")
            return EXIT_USAGE
        result = ctx.client.call("compile_dry_run", {"dir": os.path.abspath(path)}, timeout=SLOW_VERB_TIMEOUT)
        if ctx.json:
            ctx.print(render.to_json(result))
        else:
            ctx.print(f"ok {result.get('hash')}")
            for listener in result.get("listeners") or []:
                ctx.print(f"listener {render.cell(listener)}")
            trees = result.get("trees") or []
            if isinstance(trees, dict):
                trees = [{"listen": k, "tree": v} for k, v in trees.items()]
            for t in trees:
                name = t.get("listen", "?") if isinstance(t, dict) else "?"
                rules = t.get("rules") if isinstance(t, dict) else None
                ctx.print(f"{name}" + (f"  rules: {render.cell(rules)}" if rules else "") + ":")
                ctx.print(render.to_json(t.get("tree", t) if isinstance(t, dict) else t))
        return EXIT_OK
    return _compile_offline(path, args.get("--config"), ctx)


def _compile_offline(path: str, config_dir: str | None, ctx: Context) -> int:
    from vane.config.errors import CompileFailed

    try:
        from vane.compile import compile_path, link_offline
    except ImportError as e:
        ctx.error(f"vane: the offline compiler is not available: {e}")
        return EXIT_DAEMON_ERROR
    try:
        graph = compile_path(path, config_dir=config_dir)
        link_offline(graph)
    except CompileFailed as e:
        errors = [err.to_dict() for err in e.errors]
        if ctx.json:
            ctx.print(render.to_json({"errors": errors}))
        for err in errors:
            ctx.error(render.compile_error_line(err))
        return EXIT_DAEMON_ERROR
    ctx.print(render.to_json(graph.to_json()) if ctx.json else graph.render_text().rstrip("\n"))
    return EXIT_OK


def cmd_get(args: dict, ctx: Context) -> int:
    target = next(t for t in GET_TARGETS if args.get(t))
    if target == "metrics":
        result = ctx.client.call("get_metrics", {"format": "json" if ctx.json else "prometheus"})
        ctx.print(render.to_json(result) if ctx.json else result.get("text", "").rstrip("\n"))
        return EXIT_OK
    result = ctx.client.call(f"get_{target}")
    if ctx.json or target == "config":
        ctx.print(render.to_json(result))
        return EXIT_OK
    if target == "upstreams" and result.get("groups"):
        headers, getter = _GROUPS_TABLE
        ctx.print(render.table([getter(r) for r in result["groups"]], headers, ctx.tty))
        ctx.print()
    rows = result.get(target) or []
    headers, getter = _TABLES[target]
    ctx.print(render.table([getter(r) for r in rows], headers, ctx.tty, empty=f"no {target}"))
    return EXIT_OK


def _backend_state(r: dict) -> str:
    state = str(r.get("state", "-"))
    if state == "down":
        if r.get("ejected_secs"):
            return f"down (ejected {r['ejected_secs']:.0f}s)"
        if r.get("health") == "down":
            return "down (checks)"
    return state


def _check(r: dict) -> str:
    result = r.get("check")
    if result is None:
        return "-"
    return f"{result}: {r['error']}" if r.get("error") and result != "ok" else str(result)


_GROUPS_TABLE: tuple[tuple[str, ...], Callable[[dict], list]] = (
    ("group", "backend", "state", "weight", "backup", "active", "check", "last check", "latency", "fails"),
    lambda r: [r.get("group"), r.get("backend"), _backend_state(r), r.get("weight"), r.get("backup"),
               r.get("active"), _check(r), render.clock(r["last_check"]) if r.get("last_check") else "-",
               f"{r['latency_ms']:.1f}ms" if isinstance(r.get("latency_ms"), (int, float)) else "-",
               r.get("check_failures") if r.get("health") is not None else r.get("failures")])


def cmd_upstream(args: dict, ctx: Context) -> int:
    """``upstream (drain | disable | enable) GROUP BACKEND``."""
    action = next(a for a in UPSTREAM_ACTIONS if args.get(a))
    result = ctx.client.call("set_upstream", {"group": args["<group>"], "backend": args["<backend>"],
                                              "state": action})
    if ctx.json:
        ctx.print(render.to_json(result))
    else:
        ctx.print(f"{result.get('group')} {result.get('backend')} {result.get('state')}")
    return EXIT_OK


def _breaker(b: Any) -> str:
    if not isinstance(b, dict):
        return render.cell(b)
    text = str(b.get("state", "-"))
    if b.get("failures"):
        text += f" ({b['failures']} failures)"
    if b.get("state") == "open" and isinstance(b.get("open_until"), (int, float)):
        text += f" until {render.clock(b['open_until'])}"
    return text


def _cert_source(r: dict) -> str:
    """``file <path>`` or ``acme`` (``acme (fallback)`` while the self-signed stand-in serves)."""
    if r.get("source") == "acme":
        return "acme (fallback)" if r.get("fallback") else "acme"
    return f"file {r.get('path')}"


_TABLES: dict[str, tuple[tuple[str, ...], Callable[[dict], list]]] = {
    "listeners": (("address", "transport", "state", "conns", "attempts", "last error"),
                  lambda r: [r.get("address"), r.get("transport"), r.get("state"), r.get("connections"),
                             r.get("bind_attempts"), r.get("last_error")]),
    "connections": (("id", "remote", "local", "listener", "rule", "layer", "node", "in", "out", "age"),
                    lambda r: [r.get("id"), r.get("remote"), r.get("local"), r.get("listener"), r.get("rule"),
                               r.get("layer"), r.get("node"), r.get("bytes_in"), r.get("bytes_out"),
                               render.duration(r.get("age_secs"))]),
    "plugins": (("name", "driver", "branches", "breaker"),
                lambda r: [r.get("name"), r.get("driver"), r.get("branches"), _breaker(r.get("breaker"))]),
    "upstreams": (("upstream", "active", "idle", "max active", "max idle"),
                  lambda r: [r.get("upstream"), r.get("active"), r.get("idle"), r.get("max_active"),
                             r.get("max_idle")]),
    "certs": (("names", "source", "state", "issuer", "serial", "not after", "next renewal", "last error",
               "listeners"),
              lambda r: [r.get("sans"), _cert_source(r), r.get("state", "valid"), r.get("issuer"), r.get("serial"),
                         r.get("not_after"), r.get("next_renewal"), r.get("last_error"), r.get("listeners")]),
}


def cmd_tail(args: dict, ctx: Context) -> int:
    """Follow the flow log or the daemon log until Ctrl-C (exit 0)."""
    flow = bool(args.get("flow"))
    reader = ctx.client.stream("tail_flow" if flow else "tail_log")
    line = render.flow_line if flow else render.log_line
    try:
        for data in reader:
            ctx.print(render.to_json(data, lines=True) if ctx.json else line(data, ctx.tty))
    except KeyboardInterrupt:
        ctx.err.write("\n")  # end the "^C" line the terminal echoed
        ctx.err.flush()
        return EXIT_OK
    finally:
        reader.close()
    if reader.end_reason and reader.end_reason != "closed":
        ctx.error(f"vane: stream ended: {reader.end_reason}")
    return EXIT_OK


_COMMANDS: dict[str, Callable[[dict, Context], int]] = {
    "ping": cmd_ping,
    "stats": cmd_stats,
    "reload": cmd_reload,
    "shutdown": cmd_shutdown,
    "reopen-logs": cmd_reopen_logs,
    "compile": cmd_compile,
    "get": cmd_get,
    "tail": cmd_tail,
    "upstream": cmd_upstream,
}
