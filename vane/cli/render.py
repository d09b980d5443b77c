"""Output rendering for the vane CLI (DESIGN.md §10).

On a terminal: aligned tables with a bold header and a little colour. Piped: tab-separated
columns with a header line, no escape codes, so ``cut``/``awk`` work. ``--json`` output is
produced by the caller with ``to_json``.
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterable, Sequence

__all__ = [
    "compile_error_line",
    "duration",
    "flow_line",
    "keyvals",
    "log_line",
    "short_id",
    "table",
    "to_json",
]

BOLD, DIM, RED, GREEN, YELLOW, RESET = "\x1b[1m", "\x1b[2m", "\x1b[31m", "\x1b[32m", "\x1b[33m", "\x1b[0m"


def to_json(value: Any, lines: bool = False) -> str:
    """Pretty JSON for one result; compact with ``lines`` (NDJSON)."""
    if lines:
        return json.dumps(value, separators=(",", ":"), default=str)
    return json.dumps(value, indent=2, default=str)


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return " ".join(f"{k}={cell(v)}" for k, v in value.items())
    return str(value).replace("\t", " ").replace("\n", " ")


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str], tty: bool, empty: str = "") -> str:
    """Rows under headers: aligned and bold on a TTY, tab-separated otherwise."""
    cells = [[cell(v) for v in row] for row in rows]
    if not tty:
        return "\n".join("\t".join(r) for r in [list(headers)] + cells)
    if not cells and empty:
        return f"{DIM}{empty}{RESET}"
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    head = "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()
    out = [f"{BOLD}{head}{RESET}"]
    for r in cells:
        out.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(out)


def keyvals(pairs: Iterable[tuple[str, Any]], tty: bool) -> str:
    """``key  value`` lines: aligned (bold keys) on a TTY, ``key<TAB>value`` otherwise."""
    items = [(k, cell(v)) for k, v in pairs]
    if not tty:
        return "\n".join(f"{k}\t{v}" for k, v in items)
    width = max((len(k) for k, _ in items), default=0)
    return "\n".join(f"{BOLD}{k.ljust(width)}{RESET}  {v}" for k, v in items)


def duration(secs: float | None) -> str:
    """3725 -> "1h 2m 5s"."""
    if secs is None:
        return "-"
    secs = int(secs)
    days, rest = divmod(secs, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    if days or hours:
        parts.append(f"{hours}h")
    if days or hours or minutes:
        parts.append(f"{minutes}m")
    if not days:
        parts.append(f"{seconds}s")
    return " ".join(parts)


def clock(ts: float | None) -> str:
    """Local wall time with milliseconds, e.g. "14:03:07.120"."""
    if not isinstance(ts, (int, float)):
        return "--:--:--.---"
    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int((ts % 1) * 1000):03d}"


def short_id(conn_id: Any) -> str:
    """The last 8 hex digits of a UUID (its random part; UUIDv7 starts with the time)."""
    s = str(conn_id or "-").replace("-", "")
    return s[-8:] if len(s) >= 8 else s


def _status(status: Any, tty: bool) -> str:
    if status is None:
        return "-"
    text = str(status)
    if not tty or not isinstance(status, int):
        return text
    color = GREEN if status < 400 else YELLOW if status < 500 else RED
    return f"{color}{text}{RESET}"


def flow_line(entry: dict, tty: bool = False) -> str:
    """One trajectory: time, conn, rule, request (L7) or listener (L4), status, outcome, ms."""
    if "dropped" in entry and len(entry) == 1:
        return f"-- {entry['dropped']} entries dropped (this reader was too slow) --"
    rule = entry.get("rule") or "(no rule)"
    if entry.get("event") == "step":  # debug level: one event per executor step
        return (f"{clock(entry.get('ts'))} {short_id(entry.get('conn'))} {rule} step {entry.get('node', '-')} "
                f"{entry.get('plugin', '-')} -> {entry.get('branch') or '-'}")
    if entry.get("layer") == "l7" or entry.get("method"):
        what = f"{entry.get('method', '-')} {entry.get('host') or ''}{entry.get('path') or ''}"
        what += f" -> {_status(entry.get('status'), tty)}"
    else:
        what = f"{entry.get('layer', 'l4')} {entry.get('listener', '-')}"
        if entry.get("remote"):
            what += f" from {entry['remote']}"
        what += f" in={entry.get('bytes_in', 0)} out={entry.get('bytes_out', 0)}"
    outcome = str(entry.get("outcome", "-"))
    if tty and outcome in ("error", "timeout"):
        outcome = f"{RED}{outcome}{RESET}"
    ms = entry.get("ms")
    line = f"{clock(entry.get('ts'))} {short_id(entry.get('conn'))} {rule} {what} {outcome}"
    line += f" {ms:.1f}ms" if isinstance(ms, (int, float)) else ""
    errors = entry.get("errors") or []
    if errors:
        line += " errors=" + json.dumps(errors)
    missing = entry.get("missing") or []
    if missing:
        line += " missing=" + ",".join(str(m) for m in missing)
    return line


def log_line(rec: dict, tty: bool = False) -> str:
    """One log record: ``time LEVEL logger: message key=value``."""
    if "dropped" in rec and len(rec) == 1:
        return f"-- {rec['dropped']} log lines dropped (this reader was too slow) --"
    level = str(rec.get("level", "INFO"))
    if tty and level in ("WARNING", "ERROR", "CRITICAL"):
        level = f"{YELLOW if level == 'WARNING' else RED}{level}{RESET}"
    line = f"{clock(rec.get('ts'))} {level} {rec.get('logger', '-')}: {rec.get('message', '')}"
    for key, value in rec.items():
        if key in ("ts", "level", "logger", "message", "exc"):
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        line += f" {key}={json.dumps(text) if ' ' in text or not text else text}"
    if rec.get("exc"):
        line += "\n" + str(rec["exc"])
    return line


def compile_error_line(err: dict) -> str:
    """``file: pointer: message`` (same as str(ConfigError))."""
    return f"{err.get('file') or '<config>'}: {err.get('path') or '/'}: {err.get('message', '')}"
