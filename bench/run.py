#!/usr/bin/env python3
"""vane load benchmark: vaned against nginx and haproxy on loopback, in one run.

    make bench                                  # full run, 10 s per measurement
    make bench BENCH_ARGS="--quick"             # 2 s per measurement, a smoke check
    .venv/bin/python bench/run.py --only small,rss --duration 5

Starts a backend nginx, nginx and haproxy as reference proxies and vaned, drives them with
wrk, h2load and two small Python clients, prints a table with vaned's ratio to nginx and the
targets, and writes bench/results/<timestamp>.json and bench/results/latest.json.
Everything started is stopped at the end (also on Ctrl-C and on error). See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from vbench import loads, report  # noqa: E402
from vbench.loads import Unavailable  # noqa: E402
from vbench.procs import Procs, cpu_times, ensure_tools, loadavg, raise_nofile, rss_kib  # noqa: E402
from vbench.profile import Profiler, summary  # noqa: E402
from vbench.servers import BENCH_DIR, MIB, Lab  # noqa: E402

SECTIONS = ("small", "mib", "h2", "h3", "upload", "tls", "rss", "l4", "accesslog", "workers")
UPLOAD_MIB = 20
H3_REQUESTS = 2000       # sequential HTTP/3 requests on one connection (a pure-Python client)
RESULTS_DIR = os.path.join(BENCH_DIR, "results")
CLIENTS = os.path.join(BENCH_DIR, "clients")
WRK_LUA = os.path.join(BENCH_DIR, "configs", "wrk-report.lua")

# section -> [(column, server, port name, needs the backend, vaned rule)]
CELLS = {
    "small": [("direct", "backend", "BACKEND_PORT", False, None),
              ("nginx", "nginx", "NGINX_PORT", True, None),
              ("haproxy", "haproxy", "HAPROXY_PORT", True, None),
              ("ceiling", "ceiling", "CEILING_PORT", True, None),
              ("vaned", "vaned", "VANED_PORT", True, "bench"),
              ("ceiling_respond", "ceiling", "CEILING_RESPOND_PORT", False, None),
              ("vaned_respond", "vaned", "VANED_RESPOND_PORT", False, "bench-respond")],
    "mib": [("direct", "backend", "BACKEND_PORT", False, None),
            ("nginx", "nginx", "NGINX_PORT", True, None),
            ("haproxy", "haproxy", "HAPROXY_PORT", True, None),
            ("vaned", "vaned", "VANED_PORT", True, "bench")],
    "h2": [("nginx", "nginx", "NGINX_H2_PORT", True, None),
           ("haproxy", "haproxy", "HAPROXY_H2_PORT", True, None),
           ("vaned", "vaned", "VANED_H2_PORT", True, "bench-h2"),
           ("vaned_respond", "vaned", "VANED_H2_RESPOND_PORT", False, "bench-h2-respond")],
    "h3": [("vaned_respond", "vaned", "VANED_H2_RESPOND_PORT", False, "bench-h2-respond")],
    "upload": [("nginx", "nginx", "NGINX_H2_PORT", True, None),
               ("vaned", "vaned", "VANED_H2_PORT", True, "bench-h2")],
    "tls": [("nginx", "nginx", "NGINX_TLS_PORT", False, None),
            ("haproxy", "haproxy", "HAPROXY_TLS_PORT", False, None),
            ("vaned", "vaned", "VANED_H2_RESPOND_PORT", False, "bench-h2-respond")],
    "l4mib": [("direct", "backend", "BACKEND_PORT", False, None),
              ("haproxy", "haproxy", "HAPROXY_L4_PORT", True, None),
              ("vaned", "vaned", "VANED_L4_PORT", True, "bench-l4")],
    # the same match+proxy rule in two vaned processes: access log off, and on (combined, file)
    "accesslog": [("vaned_log_off", "vaned", "VANED_PORT", True, "bench"),
                  ("vaned", "vaned-log", "VANED_LOG_PORT", True, "bench")],
    "l4conn": [("direct", "backend", "BACKEND_PORT", False, None),
               ("haproxy", "haproxy", "HAPROXY_L4_PORT", True, None),
               ("vaned", "vaned", "VANED_L4_PORT", True, "bench-l4")],
}
TOOLS_FOR = {"small": ["wrk"], "mib": ["wrk"], "l4mib": ["wrk"], "l4conn": ["wrk"], "accesslog": ["wrk"],
             "h2": ["h2load", "openssl"], "h3": ["openssl"], "upload": ["openssl"], "tls": ["openssl"], "rss": [], "workers": ["wrk"]}
MAIN_METRIC = {"small": "rps", "accesslog": "rps", "mib": "mib_s", "h2": "rps", "h3": "rps", "upload": "seconds", "tls": "per_s",
               "l4mib": "mib_s",
               "l4conn": "rps"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(SECTIONS),
                   help=f"comma-separated sections to run, of: {','.join(SECTIONS)} (default: all)")
    p.add_argument("--duration", type=int, default=10, metavar="N", help="seconds per measurement (default 10)")
    p.add_argument("--quick", action="store_true", help="2 s per measurement: a smoke check, not figures")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="run each measurement N times and keep the median (default 1)")
    p.add_argument("--warmup", type=int, default=1, metavar="N",
                   help="seconds of unmeasured load before each wrk measurement (default 1, 0 = none)")
    p.add_argument("--rss-conns", type=int, default=10000, metavar="N",
                   help="idle keep-alive connections for the RSS measurement (default 10000)")
    p.add_argument("--tls-workers", type=int, default=4, metavar="N",
                   help="client processes for the TLS connection rate (default 4)")
    p.add_argument("--no-install", action="store_true", help="never run apt-get; skip rows whose tool is missing")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory (configs, logs)")
    p.add_argument("--no-save", action="store_true", help="do not write bench/results/*.json")
    p.add_argument("--profile", metavar="DIR",
                   help="record a py-spy profile of vaned during each of its rows into DIR "
                        "(collapsed stacks) and print the top functions")
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in args.sections if s not in SECTIONS]
    if bad:
        p.error(f"--only: unknown section(s) {', '.join(bad)}; choose from {','.join(SECTIONS)}")
    if args.quick:
        args.duration = 2
    if args.duration < 1 or args.repeat < 1 or args.rss_conns < 1 or args.tls_workers < 1:
        p.error("--duration, --repeat, --rss-conns and --tls-workers must be positive")
    return args


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _terminate(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


class Runner:
    def __init__(self, args: argparse.Namespace, lab: Lab, procs: Procs, tool_reasons: dict) -> None:
        self.args = args
        self.lab = lab
        self.procs = procs
        self.tool_reasons = tool_reasons
        self.results: dict[str, dict] = {}
        self.loads: list[float] = []

    def reason(self, section: str, server: str, needs_backend: bool, rule: str | None) -> str | None:
        for tool in TOOLS_FOR[section]:
            if tool in self.tool_reasons:
                return self.tool_reasons[tool]
        if section in ("h2", "h3", "upload", "tls") and not self.lab.tls:
            return f"no TLS certificate ({self.lab.tls_reason})"
        if server in self.lab.down:
            return self.lab.down[server]
        if rule and rule in self.lab.vaned_missing:
            return self.lab.vaned_missing[rule]
        if needs_backend and "backend" in self.lab.down:
            return f"backend: {self.lab.down['backend']}"
        if server not in self.lab.running:
            return f"{server} is not running"
        return None

    def measure(self, section: str, column: str, server: str, port: int) -> dict:
        """One measurement of one column; raises Unavailable."""
        a, pgid = self.args, self.lab.pgid(server)
        tools = self.lab.tools
        if section in ("small", "l4conn", "accesslog"):
            loads.http_check(port, "/", expect_body=b"hello")
        elif section in ("mib", "l4mib"):
            loads.http_check(port, "/1m.bin", expect_len=MIB)
        if section in ("small", "accesslog"):
            return loads.wrk(self.procs, tools["wrk"], WRK_LUA, port, "/", 64, a.duration,
                             server_pgid=pgid, warmup=a.warmup)
        if section in ("mib", "l4mib"):
            return loads.wrk(self.procs, tools["wrk"], WRK_LUA, port, "/1m.bin", 8, a.duration,
                             server_pgid=pgid, warmup=a.warmup)
        if section == "l4conn":
            return loads.wrk(self.procs, tools["wrk"], WRK_LUA, port, "/", 16, a.duration,
                             extra_headers=("Connection: close",), server_pgid=pgid, warmup=a.warmup)
        if section == "h2":
            loads.h2load(self.procs, tools["h2load"], port, 0, clients=1, streams=1, requests=20)
            return loads.h2load(self.procs, tools["h2load"], port, a.duration, server_pgid=pgid, warmup=a.warmup)
        if section == "h3":
            return loads.h3_requests(self.procs, port, H3_REQUESTS, self.lab.values["CERT"], server_pgid=pgid)
        if section == "upload":
            loads.h2_upload(self.procs, os.path.join(CLIENTS, "h2_upload.py"), port, 1, 1)
            return loads.h2_upload(self.procs, os.path.join(CLIENTS, "h2_upload.py"), port, UPLOAD_MIB,
                                   3 if a.duration < 5 else 5, server_pgid=pgid)
        if section == "tls":
            return loads.tls_handshakes(self.procs, os.path.join(CLIENTS, "tls_handshakes.py"), port,
                                        a.duration, a.tls_workers, server_pgid=pgid)
        raise ValueError(section)

    def profiled(self, section: str, column: str, server: str, port: int) -> dict:
        """``measure``, with a py-spy recording of vaned around it when --profile asks."""
        pid = self.lab.pgid(server)
        if not self.args.profile or server != "vaned" or pid is None:
            return self.measure(section, column, server, port)
        os.makedirs(self.args.profile, exist_ok=True)
        prof = Profiler(pid, os.path.join(self.args.profile, f"{section}-{column}.txt"))
        try:
            r = self.measure(section, column, server, port)
        finally:
            try:
                path = prof.stop()
            except RuntimeError as exc:
                say(f"  profile {section} {column}: {exc}")
                path = None
        if path:
            r["profile"] = prof_sum = summary(path)
            say(f"  profile {section} {column}: {prof_sum['samples']} samples, {path}")
            for name, pct in prof_sum["self"][:12]:
                say(f"      {pct:5.1f}% self  {name}")
        return r

    def run_cells(self, section: str) -> None:
        """Measure every column of a section; with --repeat, in rounds (all columns once, then
        again) so that a change in background load hits every column alike; keep the median."""
        out = self.results.setdefault(section, {})
        runs: dict[str, list[dict]] = {}
        for _round in range(self.args.repeat):
            for column, server, port_name, needs_backend, rule in CELLS[section]:
                if column in out:  # unavailable
                    continue
                label = f"{section:7s} {column:14s}"
                why = self.reason(section, server, needs_backend, rule)
                if not why:
                    try:
                        r = self.profiled(section, column, server, self.lab.ports[port_name])
                    except Unavailable as exc:
                        why = str(exc)
                if why:
                    out[column] = {"unavailable": why}
                    runs.pop(column, None)
                    say(f"  {label} unavailable: {why}")
                    continue
                runs.setdefault(column, []).append(r)
                self.loads.append(r["loadavg"])
                say(f"  {label} {report.fmt(r[MAIN_METRIC[section]])} {MAIN_METRIC[section]}"
                    + (f"  p99 {r['p99_ms']} ms" if "p99_ms" in r else "")
                    + (f"  CPU {r['cpu_us_per_req']} µs/req" if r.get("cpu_us_per_req") else "")
                    + f"  (load {r['loadavg']:.2f})")
        key = MAIN_METRIC[section]
        for column, col_runs in runs.items():
            col_runs.sort(key=lambda r: r[key])
            best = dict(col_runs[(len(col_runs) - 1) // 2])
            if len(col_runs) > 1:
                best["runs"] = [{k: v for k, v in r.items() if k != "output"} for r in col_runs]
                best[key + "_all"] = [r[key] for r in col_runs]
            out[column] = best

    def run_rss(self) -> None:
        out = self.results.setdefault("rss", {})
        # A fresh vaned: the figures are not those of a process that has just served the other rows.
        self.lab.stop("vaned")
        if "vaned" in self.lab.down:
            out["vaned"] = {"unavailable": self.lab.down["vaned"]}
            return
        proc = self.lab.start_vaned()
        if proc is None:
            out["vaned"] = {"unavailable": self.lab.down.get("vaned", "vaned did not start")}
            return
        # The proxy rule when it answers, else the respond rule (same HTTP stack, no upstream).
        rule, port, fallback = "bench-respond", self.lab.ports["VANED_RESPOND_PORT"], ""
        if "bench" in self.lab.vaned_rules and "backend" in self.lab.running:
            try:
                loads.http_check(self.lab.ports["VANED_PORT"], "/", expect_body=b"hello")
                rule, port = "bench", self.lab.ports["VANED_PORT"]
            except Unavailable as exc:
                fallback = f"rule 'bench': {exc}"
        else:
            fallback = self.lab.vaned_missing.get("bench") or "rule 'bench' not available"
        try:
            loads.http_check(port, "/", expect_body=b"hello")
            time.sleep(1.0)
            r = loads.idle_connections(self.procs, os.path.join(CLIENTS, "idle_conns.py"), port,
                                       self.args.rss_conns, proc.pid, self.lab.nofile)
        except Unavailable as exc:
            out["vaned"] = {"unavailable": str(exc), "rss_before_mib": _mib(rss_kib(proc.pid))}
            say(f"  rss     vaned          unavailable: {exc}")
            return
        finally:
            self.lab.stop("vaned")
        if fallback:
            r["instead_of_bench"] = fallback
        r["rule"] = rule
        out["vaned"] = r
        say(f"  rss     vaned          idle {r['rss_before_mib']} MiB, with {r['opened']} idle connections "
            f"{r['rss_after_mib']} MiB ({r['kib_per_conn']} KiB each) via rule {rule!r}")


    def run_workers(self) -> None:
        """vaned with 1 and then 2 worker processes, the same small-response loads (proxy and
        respond), one after the other: req/s, CPU µs per request over every process of the
        daemon, how the connections spread over the workers, the RSS of each process."""
        out = self.results.setdefault("workers", {})
        self.lab.stop("vaned")
        if "wrk" in self.tool_reasons:
            out["unavailable"] = self.tool_reasons["wrk"]
            return
        a = self.args
        for n in (1, 2):
            name = f"vaned-{n}w"
            proc = self.lab.start_vaned(name, workers=n)
            if proc is None:
                out[str(n)] = {"unavailable": self.lab.down.get(name, "vaned did not start")}
                say(f"  workers {n}              unavailable: {out[str(n)]['unavailable']}")
                continue
            row: dict = {}
            try:
                for column, rule, port_name in (("proxy", "bench", "VANED_PORT"),
                                                ("respond", "bench-respond", "VANED_RESPOND_PORT")):
                    if rule not in self.lab.vaned_rules or (rule == "bench" and "backend" in self.lab.down):
                        continue
                    port = self.lab.ports[port_name]
                    try:
                        loads.http_check(port, "/", expect_body=b"hello")
                        before = self.lab.vaned_stats() or {}
                        r = loads.wrk(self.procs, self.lab.tools["wrk"], WRK_LUA, port, "/", 64, a.duration,
                                      server_pgid=proc.pid, warmup=a.warmup)
                        after = self.lab.vaned_stats() or {}
                    except Unavailable as exc:
                        row[column] = {"unavailable": str(exc)}
                        continue
                    r.pop("output", None)
                    if n > 1:
                        was = {w["index"]: w["connections_total"] for w in before.get("workers", [])}
                        spread = [w["connections_total"] - was.get(w["index"], 0) for w in after.get("workers", [])]
                        r["connections_per_worker"] = spread
                        r["spread"] = round(max(spread) / min(spread), 2) if spread and min(spread) else None
                    row[column] = r
                    self.loads.append(r["loadavg"])
                    say(f"  workers {n} {column:12s} {report.fmt(r['rps'])} rps  CPU {r.get('cpu_us_per_req')} µs/req"
                        + (f"  connections per worker {r['connections_per_worker']}" if n > 1 else "")
                        + f"  (load {r['loadavg']:.2f})")
                stats = self.lab.vaned_stats() or {}
                if n > 1:
                    row["rss_mib"] = {"master": _mib((stats.get("master") or {}).get("rss_bytes", 0) / 1024),
                                      "spawner": _mib((stats.get("master") or {}).get("spawner_rss_bytes", 0) / 1024),
                                      "workers": [_mib(w.get("rss_bytes", 0) / 1024) for w in stats.get("workers", [])]}
                else:
                    row["rss_mib"] = {"daemon": _mib(rss_kib(proc.pid))}
                say(f"  workers {n} RSS MiB {row['rss_mib']}")
            finally:
                self.lab.stop(name)
            out[str(n)] = row


def _workers_table(res: dict) -> list[list[str]]:
    """The workers section as rows: req/s and CPU per request with 1 and 2 workers, the spread."""
    one, two = res.get("1") or {}, res.get("2") or {}
    rows = [["workers (same run)", "1 worker", "2 workers", "2 vs 1"]]
    for column in ("proxy", "respond"):
        a, b = one.get(column) or {}, two.get(column) or {}
        if not a.get("rps") and not b.get("rps"):
            continue
        ratio = f"{b['rps'] / a['rps']:.2f}×" if a.get("rps") and b.get("rps") else "-"
        rows.append([f"small response, {column}  req/s", report.fmt(a.get("rps")), report.fmt(b.get("rps")), ratio])
        rows.append(["  CPU µs per request (all processes)", report.fmt(a.get("cpu_us_per_req")),
                     report.fmt(b.get("cpu_us_per_req")), ""])
        if b.get("connections_per_worker"):
            rows.append(["  connections per worker; busiest/idlest", "-",
                         "/".join(str(x) for x in b["connections_per_worker"]), f"{b.get('spread')}×"])
    if len(rows) == 1:
        return []
    rss1, rss2 = one.get("rss_mib") or {}, two.get("rss_mib") or {}
    rows.append(["RSS MiB (master, spawner, each worker)", report.fmt(rss1.get("daemon")),
                 ", ".join(str(x) for x in [rss2.get("master"), rss2.get("spawner"), *(rss2.get("workers") or [])]),
                 ""])
    return rows


def _mib(kib):
    return round(kib / 1024, 1) if kib else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    started = datetime.datetime.now().astimezone()
    cpu_at_start = cpu_times()
    nofile = raise_nofile()
    sections = set(args.sections)
    cell_sections = [s for s in ("small", "mib", "h2", "h3", "upload", "tls") if s in sections]
    if "l4" in sections:
        cell_sections += ["l4mib", "l4conn"]
    if "accesslog" in sections:
        cell_sections.append("accesslog")

    needed = ["nginx"]
    for s in cell_sections + (["workers"] if "workers" in sections else []):
        needed += TOOLS_FOR[s]
    if sections & {"small", "mib", "h2", "tls", "l4"}:
        needed.append("haproxy")
    needed = list(dict.fromkeys(needed))
    if args.no_install:
        from vbench.procs import which

        tools = {t: which(t) for t in needed}
        tool_reasons = {t: f"{t} not found (--no-install)" for t, p in tools.items() if p is None}
    else:
        tools, tool_reasons = ensure_tools(needed, log=say)
    for why in tool_reasons.values():
        say(f"missing: {why}")

    procs = Procs()
    tmp = tempfile.mkdtemp(prefix="vane-bench-")
    runner = None
    interrupted = False
    try:
        lab = Lab(tmp, procs, tools, nofile, log=say)
        if "haproxy" in tool_reasons:
            lab.down["haproxy"] = tool_reasons["haproxy"]
        if "nginx" in tool_reasons:
            lab.down["backend"] = lab.down["nginx"] = tool_reasons["nginx"]
        lab.make_files()
        if sections & {"h2", "h3", "upload", "tls"}:
            lab.make_cert()
        say(f"vane bench: {', '.join(args.sections)}; {args.duration} s per measurement"
            f"{f' x{args.repeat}' if args.repeat > 1 else ''}; temp dir {tmp}")
        if "backend" not in lab.down:
            lab.start_backend()
        if sections & {"small", "mib", "h2", "upload", "tls"} and "nginx" not in lab.down:
            lab.start_nginx()
        if sections & {"small", "mib", "h2", "tls", "l4"} and "haproxy" not in lab.down:
            lab.start_haproxy()
        if "small" in sections:
            lab.start_ceiling()
        lab.prepare_vaned()
        if cell_sections:
            lab.start_vaned()
        if "accesslog" in sections:
            lab.start_vaned_log()
        for server, why in lab.down.items():
            say(f"not running: {server}: {why}")
        for rule, why in lab.vaned_missing.items():
            say(f"vaned rule {rule!r} left out: {why}")
        runner = Runner(args, lab, procs, tool_reasons)
        for section in cell_sections:
            runner.run_cells(section)
        if "rss" in sections:
            runner.run_rss()
        if "workers" in sections:
            runner.run_workers()
        versions = {t: lab.version(t) for t in ("nginx", "haproxy", "wrk", "h2load", "openssl", "vaned")}
    except KeyboardInterrupt:
        interrupted = True
        say("interrupted: stopping everything started")
    finally:
        procs.stop_all()
        if args.keep_tmp:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if interrupted or runner is None:
        return 130

    finished = datetime.datetime.now().astimezone()
    table_sections = set(cell_sections) | ({"rss"} if "rss" in sections else set())
    rows, notes = report.build_table(runner.results, table_sections, args.rss_conns)
    targets = [t for t in report.evaluate_targets(runner.results, args.rss_conns) if t["section"] in table_sections]
    load_seen = [x for x in runner.loads if x == x] + [loadavg()]
    total, stolen = (b - a for a, b in zip(cpu_at_start, cpu_times(), strict=True))
    steal_pct = round(100.0 * stolen / total, 1) if total > 0 else None
    caveat = (f"1-min load average {min(load_seen):.2f}–{max(load_seen):.2f} on {os.cpu_count()} CPUs during "
              "the run (1.0 per CPU = fully busy). Client, proxy and backend share these CPUs with "
              "whatever else runs: read the ratios within one run, not the absolute figures.")
    if steal_pct:
        caveat += (f" The hypervisor took {steal_pct} % of the CPU time (steal): every server ran slower, "
                   "the busiest (CPU-bound) most.")
    remarks = []
    rss = (runner.results.get("rss") or {}).get("vaned") or {}
    if rss.get("rule"):
        remarks.append(f"RSS: a fresh vaned; {rss['opened']} connections on rule {rss['rule']!r}, "
                       f"one request each, {rss['still_open']} still open when the RSS was read"
                       + (f" (not on 'bench': {rss['instead_of_bench']})." if rss.get("instead_of_bench") else "."))
    if "upload" in table_sections:
        remarks.append(f"upload: {UPLOAD_MIB} MiB PUT over HTTP/2 + TLS, one fresh connection per upload, "
                       "a Python h2 client that leaves Nagle's algorithm on and writes frame by frame; "
                       "the backend (nginx DAV) stores the body; median of the rounds.")
    if "tls" in table_sections:
        remarks.append(f"TLS: {args.tls_workers} client processes, each: connect, full handshake (TLS 1.3, "
                       "no resumption), one request, close; every server answers locally, no upstream. "
                       "A server well under 100 % busy was held back by the client: compare CPU µs per "
                       "connection then.")
    if rows:
        print()
        print(report.render_table(rows))
    workers_rows = _workers_table(runner.results.get("workers") or {})
    if workers_rows:
        print()
        print(report.render_table(workers_rows))
    n_table_notes = len(notes)
    target_text = report.render_targets(targets, notes) if targets else ""
    for i, why in enumerate(notes[:n_table_notes], 1):
        print(f"  [{i}] {why}")
    if targets:
        print()
        print(target_text)
        for i, why in enumerate(notes[n_table_notes:], n_table_notes + 1):
            print(f"  [{i}] {why}")
    print()
    for line in remarks:
        print(line)
    print(caveat)

    doc = {
        "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "options": {k: v for k, v in vars(args).items() if k != "only"},
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
                    "loadavg_min": min(load_seen), "loadavg_max": max(load_seen),
                    "loadavg_median": statistics.median(load_seen), "steal_pct": steal_pct, "nofile": nofile},
        "versions": versions,
        "results": runner.results,
        "table": rows,
        "footnotes": notes,
        "targets": targets,
        "remarks": remarks,
        "caveat": caveat,
    }
    if not args.no_save:
        os.makedirs(RESULTS_DIR, exist_ok=True)
        stamp = started.strftime("%Y%m%d-%H%M%S")
        path = os.path.join(RESULTS_DIR, f"{stamp}.json")
        for p in (path, os.path.join(RESULTS_DIR, "latest.json")):
            with open(p, "w") as fh:
                json.dump(doc, fh, indent=1, ensure_ascii=False)
                fh.write("\n")
        print(f"results: {os.path.relpath(path)} (and bench/results/latest.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
