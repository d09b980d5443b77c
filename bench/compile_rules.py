"""Compile-time benchmark: N HTTP rules on one listener (default 1,000). Not a test.

    .venv/bin/python bench/compile_rules.py [N]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vane.compile import compile_dir  # noqa: E402


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, "rules"))
        rules = [{"rule": f"site{i}", "listen": ["127.0.0.1:8080"],
                  "match": {"req.host": f"site{i}.example.com", "req.path": {"prefix": f"/app{i % 7}"}},
                  "flow": {"headers": {"input": {"response": {"set": {"x-site": str(i)}}}, "output": {
                      "next": {"proxy": {"input": {"upstream": f"http://127.0.0.1:{9000 + i % 50}"}}}}}}}
                 for i in range(n)]
        with open(os.path.join(tmp, "rules", "sites.json"), "w") as fh:
            json.dump(rules, fh)
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            graph = compile_dir(tmp, environ={})
            best = min(best, time.perf_counter() - t0)
        print(f"compiled {n} rules on one listener in {best * 1000:.0f} ms (best of 5); hash {graph.hash[:12]}")


if __name__ == "__main__":
    main()
