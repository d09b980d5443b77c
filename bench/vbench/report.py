"""The table printed at the end of a run, the targets, and the JSON written to bench/results/."""

from __future__ import annotations

import math

COLUMNS = ("direct", "nginx", "haproxy", "ceiling", "vaned", "ceiling_respond", "vaned_respond")
HEADERS = ("direct", "nginx", "haproxy", "ceiling", "vaned", "ceiling respond", "vaned respond")

# (section, metric, label, reference for vaned's ratio, better)
ROWS = (
    ("small", "rps", "small response, HTTP/1.1 keep-alive  req/s", "nginx", "higher"),
    ("small", "p50_ms", "  latency p50 ms", "nginx", "lower"),
    ("small", "p99_ms", "  latency p99 ms", "nginx", "lower"),
    ("small", "cpu_us_per_req", "  server CPU µs per request", "nginx", "lower"),
    ("mib", "mib_s", "1 MiB body, 8 connections  MiB/s", "nginx", "higher"),
    ("mib", "p99_ms", "  latency p99 ms", "nginx", "lower"),
    ("h2", "rps", "HTTP/2 over TLS (h2load)  req/s", "nginx", "higher"),
    ("h2", "mean_ms", "  mean request time ms", "nginx", "lower"),
    ("h2", "cpu_us_per_req", "  server CPU µs per request", "nginx", "lower"),
    ("h3", "rps", "HTTP/3 respond, one connection, sequential (aioquic client)  req/s", None, "higher"),
    ("h3", "cpu_us_per_req", "  server CPU µs per request", None, "lower"),
    ("upload", "seconds", "HTTP/2 20 MiB upload, Nagle-on client  s", "nginx", "lower"),
    ("upload", "mib_s", "  MiB/s", "nginx", "higher"),
    ("tls", "per_s", "TLS new connections/s (full handshake)", "nginx", "higher"),
    ("tls", "cpu_us_per_conn", "  server CPU µs per connection", "nginx", "lower"),
    ("tls", "server_busy_pct", "  server CPU busy % of one core", None, "higher"),
    ("accesslog", "rps", "small response, access log on (combined, file)  req/s", "vaned_log_off", "higher"),
    ("accesslog", "cpu_us_per_req", "  server CPU µs per request", "vaned_log_off", "lower"),
    ("l4mib", "mib_s", "L4 TCP forward, 1 MiB body  MiB/s", "haproxy", "higher"),
    ("l4conn", "rps", "L4 TCP forward, new connections/s", "haproxy", "higher"),
    ("rss", "rss_before_mib", "vaned RSS idle MiB", None, "lower"),
    ("rss", "rss_after_mib", "vaned RSS with {conns} idle keep-alive MiB", None, "lower"),
    ("rss", "kib_per_conn", "  KiB per idle connection", None, "lower"),
)

# (name, section, metric, kind, limit, vaned column, reference column): kind "ratio_min" =
# vaned ≥ limit × reference, "ratio_max" = vaned ≤ limit × reference, "abs_max" = vaned ≤ limit.
# The ceiling is bench/ceiling.py: gevent + httptools with no routing, pool or flow.
TARGETS = (
    ("proxy req/s ≥ 0.9 × ceiling pass-through", "small", "rps", "ratio_min", 0.9, "vaned", "ceiling"),
    ("respond req/s ≥ 0.85 × ceiling responder", "small", "rps", "ratio_min", 0.85, "vaned_respond",
     "ceiling_respond"),
    ("proxy CPU per request ≤ 1.0 × ceiling's", "small", "cpu_us_per_req", "ratio_max", 1.0, "vaned", "ceiling"),
    ("small-response p99 ≤ 3 × nginx", "small", "p99_ms", "ratio_max", 3.0, "vaned", "nginx"),
    ("1 MiB throughput ≥ 1.0 × nginx", "mib", "mib_s", "ratio_min", 1.0, "vaned", "nginx"),
    ("HTTP/2 over TLS req/s ≥ 0.24 × nginx", "h2", "rps", "ratio_min", 0.24, "vaned", "nginx"),
    ("HTTP/2 20 MiB upload time ≤ 2 × nginx", "upload", "seconds", "ratio_max", 2.0, "vaned", "nginx"),
    ("TLS handshakes/s ≥ 0.7 × nginx", "tls", "per_s", "ratio_min", 0.7, "vaned", "nginx"),
    ("L4 new connections/s ≥ 0.67 × haproxy", "l4conn", "rps", "ratio_min", 0.67, "vaned", "haproxy"),
    ("10k idle connections ≤ 150 MiB RSS", "rss", "rss_after_mib", "abs_max", 150.0, "vaned", None),
)
UNITS = {"rss_after_mib": "MiB", "cpu_us_per_req": "µs"}


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "-"
    v = float(value)
    if v >= 100000:
        return f"{v / 1000:,.0f}k"
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


class Footnotes:
    def __init__(self) -> None:
        self.items: list[str] = []

    def mark(self, reason: str) -> str:
        if reason not in self.items:
            self.items.append(reason)
        return f"n/a[{self.items.index(reason) + 1}]"


def cell(results: dict, section: str, column: str):
    """(value dict or None, unavailable reason or None)."""
    entry = (results.get(section) or {}).get(column)
    if entry is None:
        return None, None
    if "unavailable" in entry:
        return None, entry["unavailable"]
    return entry, None


def ratio(results: dict, section: str, metric: str, ref: str | None, column: str = "vaned") -> float | None:
    if not ref:
        return None
    v, _ = cell(results, section, column)
    r, _ = cell(results, section, ref)
    if not v or not r or v.get(metric) in (None, 0) or not r.get(metric):
        return None
    return v[metric] / r[metric]


def build_table(results: dict, sections: set[str], conns: int = 10000) -> tuple[list[list[str]], list[str]]:
    notes = Footnotes()
    rows = [["measurement", *HEADERS, "vaned ratio"]]
    for section, metric, label, ref, _better in ROWS:
        if section not in sections:
            continue
        line = [label.replace("{conns}", f"{conns // 1000}k" if conns % 1000 == 0 else str(conns))]
        for column in COLUMNS:
            value, reason = cell(results, section, column)
            if reason:
                # one footnote per cell and reason; the metric sub-rows repeat the mark
                line.append(notes.mark(reason))
            elif value is None:
                line.append("-")
            else:
                line.append(fmt(value.get(metric)))
        r = ratio(results, section, metric, ref)
        text = f"{r:.2f}× {ref}" if r is not None else ""
        c = ratio(results, section, metric, "ceiling") if section == "small" else None
        if c is not None:
            text += f", {c:.2f}× ceiling"
        line.append(text)
        rows.append(line)
    return rows, notes.items


def render_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def evaluate_targets(results: dict, rss_conns: int = 10000) -> list[dict]:
    out = []
    for name, section, metric, kind, limit, column, ref in TARGETS:
        item = {"target": name, "section": section, "metric": metric, "limit": limit, "ref": ref}
        v, reason = cell(results, section, column)
        if kind == "abs_max":
            value = v.get(metric) if v else None
            item.update(value=value, unit=UNITS.get(metric, ""))
            ok = value is not None and value <= limit
        else:
            value = ratio(results, section, metric, ref, column)
            item.update(value=round(value, 3) if value is not None else None, unit=f"× {ref}")
            ok = value is not None and (value >= limit if kind == "ratio_min" else value <= limit)
        # Capacity estimate from the server CPU time per request (1 / CPU per request is the
        # rate one core could reach): steadier than req/s when other work competes for the CPUs.
        if kind == "ratio_min":
            rv, _ = cell(results, section, ref)
            key = "cpu_us_per_req"
            if v and rv and v.get(key) and rv.get(key):
                item["cpu_estimate"] = round(rv[key] / v[key], 3)
        if item["value"] is None:
            _ref, ref_reason = cell(results, section, ref) if ref else (None, None)
            why = reason or (ref_reason and f"{ref}: {ref_reason}") or "not measured"
            item.update(status="n/a", reason=why)
        elif section == "rss" and rss_conns != 10000:
            item.update(status="n/a", reason=f"measured with {rss_conns} connections, not 10000")
        else:
            item["status"] = "PASS" if ok else "SHORT"
        out.append(item)
    return out


def render_targets(targets: list[dict], footnotes: list[str]) -> str:
    """The targets table; a reason already among the main table's footnotes is shown by its
    number, a new one is appended to ``footnotes`` (print them after this table)."""
    rows = [["target", "vaned", "limit", "result", "by CPU time"]]
    for t in targets:
        unit = t.get("unit", "")
        ratio_unit = unit.startswith("×")
        value = "-" if t["value"] is None else (f"{t['value']:.2f}{unit}" if ratio_unit
                                                 else f"{t['value']:.1f} {unit}")
        limit = f"{t['limit']:.2f}{unit}" if ratio_unit else f"{t['limit']:.0f} {unit}"
        result = t["status"]
        if t["status"] == "n/a":
            if t["reason"] not in footnotes:
                footnotes.append(t["reason"])
            result += f"[{footnotes.index(t['reason']) + 1}]"
        est = f"{t['cpu_estimate']:.2f}× {t['ref']}" if t.get("cpu_estimate") is not None else ""
        rows.append([t["target"], value, limit, result, est])
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for n, r in enumerate(rows):
        lines.append(f"{r[0].ljust(widths[0])}  {r[1].rjust(widths[1])}  {r[2].rjust(widths[2])}  "
                     f"{r[3].ljust(widths[3])}  {r[4].rjust(widths[4])}".rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
