"""Load generators (wrk, h2load, the TLS and idle-connection clients) and their parsers.

Each runner returns a dict of figures or raises :class:`Unavailable` with a one-line reason.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import statistics
import subprocess
import sys
import time

from .procs import Procs, fd_count, group_cpu_seconds, loadavg, rss_kib

HOST = "bench.local"
MAX_ERROR_SHARE = 0.01  # more than 1 % failed requests makes a figure meaningless


class Unavailable(Exception):
    """A figure that cannot be measured; the message is shown in the table."""


def http_check(port: int, path: str = "/", expect_body: bytes | None = None,
               expect_len: int | None = None, timeout: float = 5.0) -> None:
    """One plain HTTP/1.1 request with ``Host: bench.local``; raises Unavailable unless it is a
    200 with the expected body."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request("GET", path, headers={"Host": HOST})
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
    except (OSError, http.client.HTTPException) as exc:
        raise Unavailable(f"GET {path} failed: {type(exc).__name__}: {exc}") from None
    if resp.status != 200:
        raise Unavailable(f"GET {path} answered {resp.status} {body[:80]!r}")
    if expect_body is not None and body != expect_body:
        raise Unavailable(f"GET {path} answered an unexpected body {body[:40]!r}")
    if expect_len is not None and len(body) != expect_len:
        raise Unavailable(f"GET {path} answered {len(body)} bytes, expected {expect_len}")


class CpuMeter:
    """CPU seconds used by a server's process group over a measurement."""

    def __init__(self, pgid: int | None) -> None:
        self.pgid = pgid
        self.t0 = group_cpu_seconds(pgid) if pgid else 0.0

    def used(self) -> float | None:
        return group_cpu_seconds(self.pgid) - self.t0 if self.pgid else None


def _per(cpu: float | None, count: int) -> float | None:
    return round(cpu / count * 1e6, 1) if cpu is not None and count else None


def _busy(cpu: float | None, seconds: float) -> float | None:
    """Share of one core the server used: well under 100 % means the client, not the server,
    set the pace."""
    return round(cpu / seconds * 100, 1) if cpu is not None and seconds > 0 else None


# ---- wrk ---------------------------------------------------------------------------------------

def wrk(procs: Procs, exe: str, lua: str, port: int, path: str, conns: int, seconds: int,
        extra_headers: tuple[str, ...] = (), server_pgid: int | None = None, warmup: int = 0) -> dict:
    url = f"http://127.0.0.1:{port}{path}"
    base = [exe, "-t1", f"-c{conns}", "--latency", "-H", f"Host: {HOST}"]
    for h in extra_headers:
        base += ["-H", h]
    if warmup:
        procs.run("wrk", [*base, f"-d{warmup}s", url], timeout=warmup + 30)
    la = loadavg()
    cpu = CpuMeter(server_pgid)
    argv = [*base, f"-d{seconds}s", "-s", lua, url]
    rc, out, err = procs.run("wrk", argv, timeout=seconds + 60)
    used = cpu.used()
    m = re.search(r"^WRKJSON (\{.*\})$", out, re.M)
    if rc != 0 or not m:
        raise Unavailable(f"wrk failed (rc {rc}): {(err or out).strip().splitlines()[-1:] or ''}")
    s = json.loads(m.group(1))
    n = s["requests"]
    if n == 0:
        raise Unavailable("no response in the whole run" + _socket_errors(s))
    secs = s["duration_us"] / 1e6
    sock_errors = s["connect"] + s["read"] + s["write"] + s["timeout"]
    if s["status"] > MAX_ERROR_SHARE * n:
        raise Unavailable(f"{s['status']} of {n} responses were not 2xx/3xx")
    if sock_errors > MAX_ERROR_SHARE * n:
        raise Unavailable(f"{sock_errors} socket errors for {n} responses" + _socket_errors(s))
    return {
        "rps": round(n / secs, 1),
        "mib_s": round(s["bytes"] / secs / 2**20, 1),
        "p50_ms": round(s["p50_us"] / 1000, 3),
        "p75_ms": round(s["p75_us"] / 1000, 3),
        "p90_ms": round(s["p90_us"] / 1000, 3),
        "p99_ms": round(s["p99_us"] / 1000, 3),
        "mean_ms": round(s["mean_us"] / 1000, 3),
        "requests": n, "seconds": round(secs, 3), "bytes": s["bytes"],
        "errors": {k: s[k] for k in ("connect", "read", "write", "timeout", "status")},
        "server_cpu_s": round(used, 2) if used is not None else None,
        "cpu_us_per_req": _per(used, n),
        "server_busy_pct": _busy(used, secs),
        "loadavg": la,
        "command": " ".join(argv),
        "output": out.split("WRKJSON", 1)[0].rstrip(),
    }


def _socket_errors(s: dict) -> str:
    parts = [f"{k} {s[k]}" for k in ("connect", "read", "write", "timeout") if s[k]]
    return f" (socket errors: {', '.join(parts)})" if parts else ""


# ---- h2load ------------------------------------------------------------------------------------

def h3_requests(procs: Procs, port: int, count: int, ca: str, server_pgid: int | None = None) -> dict:
    """``count`` sequential HTTP/3 requests on one QUIC connection with aioquic's client
    (tests/support/h3client.py, a subprocess): req/s between the first answer and the last, by
    the client's clock (its start, the connection and the handshake not counted), and the
    server's CPU per request."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": repo}
    base = [sys.executable, "-m", "tests.support.h3client", f"https://127.0.0.1:{port}/", "--sni", HOST,
            "--ca", ca, "--timeout", "60"]

    def run(n: int) -> tuple[list[dict], float]:
        t0 = time.monotonic()
        rc, out, err = procs.run("h3client", [*base, "--repeat", str(n)], timeout=120, env=env)
        elapsed = time.monotonic() - t0
        lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
        if rc != 0 or not lines or "status" not in lines[0]:
            why = (lines[0].get("error") if lines else None) or _last_line(err or out)
            raise Unavailable(f"HTTP/3 client failed (rc {rc}): {why}")
        return lines, elapsed

    run(1)
    la = loadavg()
    cpu = CpuMeter(server_pgid)
    lines, elapsed = run(count)
    used = cpu.used()
    ok = sum(1 for x in lines if x.get("status") == 200)
    if ok < count * (1 - MAX_ERROR_SHARE):
        raise Unavailable(f"{count - ok} of {count} HTTP/3 requests failed")
    stamps = [x["t"] for x in lines if "t" in x]
    span = stamps[-1] - stamps[0] if len(stamps) > 1 else elapsed
    return {"rps": round((len(stamps) - 1) / max(span, 1e-3), 1), "requests": count, "succeeded": ok,
            "seconds": round(elapsed, 3), "cpu_us_per_req": _per(used, ok), "loadavg": la}


def h2load(procs: Procs, exe: str, port: int, seconds: int, clients: int = 16, streams: int = 10,
           server_pgid: int | None = None, warmup: int = 1, requests: int | None = None) -> dict:
    url = f"https://127.0.0.1:{port}/"
    base = [exe, f"-c{clients}", f"-m{streams}", "-H", f":authority: {HOST}"]
    if requests:
        argv = [*base, f"-n{requests}", url]
    else:
        if warmup:  # a separate run, so that the CPU time measured below matches the counted requests
            procs.run("h2load", [*base, f"-D{warmup}", url], timeout=warmup + 60)
        argv = [*base, f"-D{seconds}", url]
    la = loadavg()
    cpu = CpuMeter(server_pgid)
    rc, out, err = procs.run("h2load", argv, timeout=seconds + 60)
    used = cpu.used()
    text = out + err
    proto = re.search(r"Application protocol:\s*(\S+)", text)
    fin = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
    reqs = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                     r"(\d+) errored, (\d+) timeout", text)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    tfr = re.search(r"time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)", text)
    if not (fin and reqs):
        raise Unavailable(f"h2load failed (rc {rc}): {_last_line(text)}")
    if not proto or proto.group(1) != "h2":
        raise Unavailable(f"h2 was not negotiated by ALPN ({proto.group(1) if proto else 'no protocol'})")
    total, done, ok = int(reqs.group(1)), int(reqs.group(3)), int(reqs.group(4))
    bad = int(codes.group(2)) + int(codes.group(3)) + int(codes.group(4)) if codes else 0
    if ok == 0:
        raise Unavailable(f"no request succeeded: {_last_line(text)}")
    if bad > MAX_ERROR_SHARE * done or (done - ok) > MAX_ERROR_SHARE * max(done, 1):
        raise Unavailable(f"{done - ok} failed and {bad} non-2xx of {done} requests")
    unit = {"us": 1e-3, "ms": 1.0, "s": 1000.0}
    return {
        "rps": float(fin.group(3)),
        "mean_ms": round(float(tfr.group(5)) * unit[tfr.group(6)], 3) if tfr else None,
        "max_ms": round(float(tfr.group(3)) * unit[tfr.group(4)], 3) if tfr else None,
        "requests": done, "succeeded": ok, "total": total,
        "server_cpu_s": round(used, 2) if used is not None else None,
        "cpu_us_per_req": _per(used, ok) if not requests else None,
        "server_busy_pct": _busy(used, _seconds(fin)) if not requests else None,
        "loadavg": la,
        "command": " ".join(argv),
        "output": text.strip(),
    }


def _seconds(fin: re.Match) -> float:
    return float(fin.group(1)) / (1000 if fin.group(2) == "ms" else 1)


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "no output"


# ---- TLS handshakes ----------------------------------------------------------------------------

def tls_handshakes(procs: Procs, script: str, port: int, seconds: float, workers: int,
                   server_pgid: int | None = None) -> dict:
    argv = [sys.executable, script, "127.0.0.1", str(port), str(seconds), str(workers), HOST]
    la = loadavg()
    cpu = CpuMeter(server_pgid)
    rc, out, err = procs.run("tls-client", argv, timeout=seconds + 60)
    used = cpu.used()
    try:
        r = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise Unavailable(f"TLS client failed (rc {rc}): {_last_line(err or out)}") from None
    if r["ok"] == 0:
        raise Unavailable(f"no TLS connection completed: {r['last_error']}")
    if r["failed"] > MAX_ERROR_SHARE * r["ok"]:
        raise Unavailable(f"{r['failed']} of {r['ok'] + r['failed']} TLS connections failed: {r['last_error']}")
    return {
        "per_s": round(r["ok"] / r["elapsed"], 1),
        "connections": r["ok"], "failed": r["failed"], "seconds": round(r["elapsed"], 3),
        "workers": workers,
        "p50_ms": round(r["p50_ms"], 3), "p99_ms": round(r["p99_ms"], 3),
        "server_cpu_s": round(used, 2) if used is not None else None,
        "cpu_us_per_conn": _per(used, r["ok"]),
        "server_busy_pct": _busy(used, r["elapsed"]),
        "loadavg": la,
        "command": " ".join(argv),
    }


# ---- idle connections --------------------------------------------------------------------------

def idle_connections(procs: Procs, script: str, port: int, count: int, pid: int, nofile: int,
                     settle: float = 2.0) -> dict:
    """Open ``count`` keep-alive connections (one request each) and read the server's VmRSS."""
    before = rss_kib(pid)
    fds_before = fd_count(pid)
    client = procs.start("idle-client", [sys.executable, script, "127.0.0.1", str(port), str(count), HOST],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, nofile=nofile)
    try:
        line = _read_line(client.popen, timeout=180)
        if not line:
            raise Unavailable("the idle-connection client gave no result")
        ready = json.loads(line)
        time.sleep(settle)
        after = rss_kib(pid)
        fds_after = fd_count(pid)
        client.popen.stdin.write(b"check\n")
        client.popen.stdin.flush()
        line = _read_line(client.popen, timeout=60)
        alive = json.loads(line)["alive"] if line else None
    finally:
        procs.stop(client)
    if after is None:
        raise Unavailable("vaned exited while the connections were open")
    if ready["open"] < count:
        raise Unavailable(f"only {ready['open']} of {count} connections were set up "
                          f"({ready['failed']} failed: {ready['first_error']})")
    return {
        "connections": count, "opened": ready["open"], "still_open": alive,
        "setup_seconds": ready["seconds"],
        "rss_before_mib": round(before / 1024, 1) if before else None,
        "rss_after_mib": round(after / 1024, 1),
        "kib_per_conn": round((after - (before or 0)) / count, 2),
        "fds_before": fds_before, "fds_after": fds_after,
    }


def _read_line(popen, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    fd = popen.stdout.fileno()
    buf = b""
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.5)
        if r:
            chunk = os.read(fd, 65536)
            if not chunk:
                return buf
            buf += chunk
            if b"\n" in buf:
                return buf.split(b"\n", 1)[0]
        elif popen.poll() is not None:
            return buf
    return buf


# ---- HTTP/2 upload -----------------------------------------------------------------------------

def h2_upload(procs: Procs, script: str, port: int, size_mib: int, rounds: int,
              server_pgid: int | None = None) -> dict:
    """``rounds`` uploads of ``size_mib`` MiB over HTTP/2 with a Nagle-on client: the median
    time of one upload."""
    argv = [sys.executable, script, "127.0.0.1", str(port), str(size_mib), str(rounds), HOST, "/upload/blob"]
    la = loadavg()
    cpu = CpuMeter(server_pgid)
    rc, out, err = procs.run("h2-upload", argv, timeout=rounds * 130 + 30)
    used = cpu.used()
    try:
        r = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise Unavailable(f"upload client failed (rc {rc}): {_last_line(err or out)}") from None
    if not r["times"]:
        raise Unavailable(f"no upload completed: {r['last_error']}")
    if r["failed"]:
        raise Unavailable(f"{r['failed']} of {rounds} uploads failed: {r['last_error']}")
    bad = [s for s in r["statuses"] if not 200 <= s < 300]
    if bad:
        raise Unavailable(f"uploads answered {bad[0]}")
    median = statistics.median(r["times"])
    return {
        "seconds": round(median, 3),
        "mib_s": round(size_mib / median, 1),
        "times": [round(t, 3) for t in r["times"]],
        "uploads": len(r["times"]),
        "server_cpu_s": round(used, 2) if used is not None else None,
        "loadavg": la,
        "command": " ".join(argv),
    }
