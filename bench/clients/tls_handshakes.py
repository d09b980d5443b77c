"""TLS connection-setup load: each worker process loops connect → full TLS handshake →
one HTTP/1.1 request (``Connection: close``) → read the response → close, for a fixed time.

No session resumption (a session is never handed back to the next connection), so every
connection pays a full handshake. Prints one JSON line with the totals.

    python tls_handshakes.py HOST PORT SECONDS WORKERS SERVER_NAME
"""

from __future__ import annotations

import json
import multiprocessing
import socket
import ssl
import sys
import time


def one(ctx: ssl.SSLContext, host: str, port: int, name: str) -> None:
    raw = socket.create_connection((host, port), timeout=5)
    try:
        tls = ctx.wrap_socket(raw, server_hostname=name)
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = tls.recv(4096)
            if not chunk:
                raise ConnectionError("closed before the response head")
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode("latin-1"))
        length = None
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        while length is not None and len(body) < length:
            chunk = tls.recv(4096)
            if not chunk:
                break
            body += chunk
        tls.close()
    finally:
        raw.close()


def worker(args: tuple) -> dict:
    host, port, seconds, name = args
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    ok = failed = 0
    times: list[float] = []
    last_error = ""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        try:
            one(ctx, host, port, name)
        except (OSError, ValueError) as exc:
            failed += 1
            last_error = f"{type(exc).__name__}: {exc}"
            if failed > 50 and ok == 0:
                break
            continue
        times.append(time.perf_counter() - t0)
        ok += 1
    return {"ok": ok, "failed": failed, "times": times, "last_error": last_error}


def main() -> None:
    host, port, seconds, workers, name = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    t0 = time.monotonic()
    with multiprocessing.Pool(workers) as pool:
        results = pool.map(worker, [(host, port, seconds, name)] * workers)
    elapsed = time.monotonic() - t0
    times = sorted(t for r in results for t in r["times"])

    def pct(p: float) -> float | None:
        return times[min(len(times) - 1, int(p / 100 * len(times)))] * 1000 if times else None

    print(json.dumps({
        "ok": sum(r["ok"] for r in results), "failed": sum(r["failed"] for r in results),
        "seconds": seconds, "elapsed": elapsed, "workers": workers,
        "p50_ms": pct(50), "p99_ms": pct(99),
        "last_error": next((r["last_error"] for r in results if r["last_error"]), ""),
    }))


if __name__ == "__main__":
    main()
