#!/usr/bin/env python3
"""Instructions per request of the server alone: vaned against the ceiling, under callgrind.

    .venv/bin/python bench/instructions.py [--requests N] [--only respond,proxy]

Each server runs under ``valgrind --tool=callgrind`` (which counts the instructions a process
executes in user space, the same on every run whatever else the machine does) and is driven
by ``h2load --h1 -c16`` from outside: once with N/3 requests, once with N. The difference of
the two counts, divided by the difference in requests, is what one keep-alive request costs
the server: start-up, warm-up and the client are left out. The pass-through rows get a
backend that runs outside callgrind (the ceiling responder), so only the proxy is counted.

Rows: ``respond`` (vaned's ``match`` + ``respond`` against ``bench/ceiling.py --respond``) and
``proxy`` (``match`` + ``proxy`` against ``bench/ceiling.py --proxy``). Needs valgrind and
h2load (``nghttp2-client``). A measurement, not a test; a few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from vbench.procs import LOOPBACK, free_ports, port_open  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = os.path.join(ROOT, ".venv", "bin", "python")
CEILING = os.path.join(ROOT, "bench", "ceiling.py")
_COLLECTED = re.compile(rb"Collected : (\d+)")


def counted(cmd: list[str], port: int, requests: int, env: dict) -> int:
    """The instructions ``cmd`` executed while serving ``requests`` (plus its start and stop)."""
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *cmd],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not port_open(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{cmd[1]} did not start listening on {port}")
            time.sleep(0.5)
        load(port, 300)                         # warm-up, in both runs alike
        load(port, requests)
    finally:
        proc.send_signal(signal.SIGTERM)        # vaned drains and exits; the ceiling stops at once
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    found = _COLLECTED.findall(err)
    if not found:
        raise SystemExit(f"no instruction count from callgrind for {cmd[1]}")
    return int(found[-1])


def load(port: int, requests: int) -> None:
    out = subprocess.run(["h2load", "--h1", "-c16", "-n", str(requests), f"http://{LOOPBACK}:{port}/"],
                         capture_output=True, text=True, timeout=600).stdout
    if f"{requests} succeeded" not in out:
        raise SystemExit(f"h2load on port {port}: not every request succeeded:\n{out}")


def per_request(cmd: list[str], port: int, n: int, env: dict) -> float:
    low = counted(cmd, port, n // 3, env)
    high = counted(cmd, port, n, env)
    return (high - low) / (n - n // 3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=9000, metavar="N")
    p.add_argument("--only", default="respond,proxy")
    args = p.parse_args()
    rows = [r for r in args.only.split(",") if r]
    if set(rows) - {"respond", "proxy"} or args.requests < 30:
        p.error("--only takes respond and/or proxy; --requests at least 30")
    for tool in ("valgrind", "h2load"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed (apt-get install valgrind nghttp2-client)")
    backend, respond, proxy, c_respond, c_proxy = free_ports(5)
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, "rules"))
        match = {"req.host": LOOPBACK}          # h2load sends Host: 127.0.0.1:<port>
        with open(os.path.join(tmp, "rules", "bench.json"), "w") as fh:
            json.dump([
                {"rule": "respond", "listen": [f"{LOOPBACK}:{respond}"], "match": match,
                 "flow": {"respond": {"input": {"body": "hello"}}}},
                {"rule": "proxy", "listen": [f"{LOOPBACK}:{proxy}"], "match": match,
                 "flow": {"proxy": {"input": {"upstream": f"http://{LOOPBACK}:{backend}"}}}},
            ], fh)
        env = {k: v for k, v in os.environ.items() if not k.startswith("VANE_")}
        env.update(VANE_MGMT_HTTP_PORT="", VANE_MGMT_UNIX=os.path.join(tmp, "vaned.sock"),
                   VANE_STATE_DIR=os.path.join(tmp, "state"), VANE_LOG_LEVEL="warning")
        vaned = [PY, os.path.join(ROOT, ".venv", "bin", "vaned"), "--config", tmp]
        upstream = subprocess.Popen([PY, CEILING, "--respond", str(backend)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            print(f"{'row':8s} {'vaned':>10s} {'ceiling':>10s}  ratio   (instructions per request, server alone)")
            for row in rows:
                if row == "respond":
                    ours = per_request(vaned, respond, args.requests, env)
                    theirs = per_request([PY, CEILING, "--respond", str(c_respond)], c_respond, args.requests, env)
                else:
                    ours = per_request(vaned, proxy, args.requests, env)
                    theirs = per_request([PY, CEILING, "--proxy", str(c_proxy), "--backend",
                                          f"{LOOPBACK}:{backend}"], c_proxy, args.requests, env)
                print(f"{row:8s} {ours / 1000:9.1f}K {theirs / 1000:9.1f}K  {ours / theirs:4.2f}×", flush=True)
        finally:
            upstream.terminate()
            upstream.wait(timeout=10)


if __name__ == "__main__":
    main()
