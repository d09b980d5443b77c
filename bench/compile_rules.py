"""Compile-time benchmark: how long loading and compiling N rules takes (no daemon). Not a test.

    .venv/bin/python bench/compile_rules.py [N ...] [--files N] [--repeat R] [--profile]

Each N is a config of N HTTP rules on one listener in one rule file (default sizes 1000,
5000 and 10000). ``--files N`` adds a config of N rule files holding one rule each (default
5000; 0 leaves it out). A reload compiles on the daemon, so these figures are how long a
reload takes before the new graph serves. ``--profile`` prints the top cProfile entries of
one compile of each config.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vane.compile import compile_dir  # noqa: E402


def site_rule(i: int) -> dict:
    return {"rule": f"site{i}", "listen": ["127.0.0.1:8080"],
            "match": {"req.host": f"site{i}.example.com", "req.path": {"prefix": f"/app{i % 7}"}},
            "flow": {"headers": {"input": {"response": {"set": {"x-site": str(i)}}}, "output": {
                "next": {"proxy": {"input": {"upstream": f"http://127.0.0.1:{9000 + i % 50}"}}}}}}}


def write_one_file(root: str, n: int) -> None:
    os.makedirs(os.path.join(root, "rules"))
    with open(os.path.join(root, "rules", "sites.json"), "w") as fh:
        json.dump([site_rule(i) for i in range(n)], fh)


def write_many_files(root: str, n: int) -> None:
    os.makedirs(os.path.join(root, "rules"))
    for i in range(n):
        with open(os.path.join(root, "rules", f"{i:06d}-site.json"), "w") as fh:
            json.dump(site_rule(i), fh)


def measure(label: str, root: str, repeat: int, profile: bool) -> None:
    best = float("inf")
    graph = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        graph = compile_dir(root, environ={})
        best = min(best, time.perf_counter() - t0)
    print(f"{label:<34} {best * 1000:8.0f} ms  (best of {repeat}; hash {graph.hash[:12]})", flush=True)
    if profile:
        prof = cProfile.Profile()
        prof.enable()
        compile_dir(root, environ={})
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
        print(out.getvalue(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[1000, 5000, 10000],
                        help="rules on one listener, in one file")
    parser.add_argument("--files", type=int, default=5000, help="rule files of one rule each (0: none)")
    parser.add_argument("--repeat", type=int, default=3, help="compiles per config; the best counts")
    parser.add_argument("--profile", action="store_true", help="print the top cProfile entries")
    args = parser.parse_args()
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            write_one_file(tmp, n)
            measure(f"{n} rules, one file, one listener", tmp, args.repeat, args.profile)
    if args.files:
        with tempfile.TemporaryDirectory() as tmp:
            write_many_files(tmp, args.files)
            measure(f"{args.files} files of one rule", tmp, args.repeat, args.profile)


if __name__ == "__main__":
    main()
