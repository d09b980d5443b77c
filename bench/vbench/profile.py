"""py-spy profiles of vaned while a row is measured (``bench/run.py --profile DIR``).

py-spy samples the process from outside (``--nonblocking``: vaned is never paused) and writes
collapsed stacks; ``summary`` turns them into the functions that hold the CPU, by self time
and by inclusive time, the two views a profile is read in. The figures of a profiled row are
a little lower than an unprofiled one: compare profiles with profiles.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys

__all__ = ["Profiler", "summary"]


class Profiler:
    """One py-spy recording of one process, started before a measurement, stopped after it."""

    def __init__(self, pid: int, out: str, rate: int = 200) -> None:
        exe = shutil.which("py-spy") or os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "py-spy")
        self.out = out
        self.proc = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--rate", str(rate), "--nonblocking", "--format", "raw",
             "--output", out], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> str | None:
        """Stop recording; the path of the collapsed stacks, or None when py-spy failed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            return None
        if not os.path.exists(self.out):
            tail = err.decode(errors="replace").strip().splitlines()[-1:] if err else []
            raise RuntimeError(f"py-spy wrote no profile ({tail[0] if tail else 'no output'})")
        return self.out


def _frame(raw: str) -> str:
    """``handle (vane/flow/http.py:120)`` -> ``handle (vane/flow/http.py)``: one entry per function."""
    name, _, where = raw.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        path = path.split("/vane/", 1)[-1] if "/vane/" in path else path
    return f"{name} ({path})"


def summary(path: str, top: int = 15) -> dict:
    """{"samples", "self": [[function, share]], "inclusive": [[function, share]]}."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = [_frame(x) for x in stack.split(";")]
            total += n
            own[frames[-1]] += n
            for fr in set(frames):
                incl[fr] += n
    if not total:
        return {"samples": 0, "self": [], "inclusive": []}

    def share(c: collections.Counter) -> list:
        return [[name, round(100.0 * n / total, 1)] for name, n in c.most_common(top)]
    return {"samples": total, "self": share(own), "inclusive": share(incl)}
