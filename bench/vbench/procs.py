"""Start, watch and stop the processes of one bench run; free loopback ports; tool installation.

Every process is started in its own session (its own process group) so that a Ctrl-C at the
terminal reaches only the harness, which then stops each group it started, by id.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field

LOOPBACK = "127.0.0.1"
WANT_NOFILE = 65536


def nofile_limit() -> int:
    """The highest RLIMIT_NOFILE this process may give itself and its children."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return WANT_NOFILE
    return min(WANT_NOFILE, hard)


def raise_nofile() -> int:
    n = nofile_limit()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))
    return n


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (held together while chosen)."""
    socks, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tail(path: str, lines: int = 8) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read()[-4000:].decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.strip().splitlines()[-lines:])


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: str | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None


@dataclass
class Procs:
    """The processes started by one run, stopped in reverse order by :meth:`stop_all`."""

    items: list[Proc] = field(default_factory=list)

    def start(self, name: str, argv: list[str], *, env: dict | None = None, log: str | None = None,
              nofile: int | None = None, stdin=subprocess.DEVNULL, stdout=None, cwd: str | None = None) -> Proc:
        def preexec() -> None:
            if nofile:
                _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

        out = open(log, "ab") if log else subprocess.DEVNULL
        try:
            popen = subprocess.Popen(argv, env=env, stdin=stdin,
                                     stdout=stdout if stdout is not None else out,
                                     stderr=out, cwd=cwd, start_new_session=True,
                                     preexec_fn=preexec if nofile else None)
        finally:
            if log:
                out.close()
        proc = Proc(name, popen, log)
        self.items.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 5.0) -> None:
        """SIGTERM to the process group the harness created, then SIGKILL if it lingers."""
        if proc in self.items:
            self.items.remove(proc)
        pgid = proc.popen.pid  # start_new_session: the group id is the leader's pid
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 2.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            if _wait_gone(proc.popen, pgid, wait):
                break
        try:
            proc.popen.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
        for stream in (proc.popen.stdin, proc.popen.stdout):
            if stream:
                stream.close()

    def stop_all(self) -> None:
        for proc in reversed(list(self.items)):
            self.stop(proc)

    def run(self, name: str, argv: list[str], timeout: float, env: dict | None = None,
            nofile: int | None = None) -> tuple[int, str, str]:
        """Run a bounded command to completion; returns (rc, stdout, stderr)."""
        popen = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, start_new_session=True,
                                 preexec_fn=(lambda: resource.setrlimit(
                                     resource.RLIMIT_NOFILE,
                                     (nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1])))
                                 if nofile else None)
        proc = Proc(name, popen)
        self.items.append(proc)
        try:
            out, err = popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(proc, timeout=1)
            return -1, "", f"{name}: no result within {timeout:.0f} s"
        except BaseException:
            self.stop(proc, timeout=1)
            raise
        self.items.remove(proc)
        return popen.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def _wait_gone(popen: subprocess.Popen, pgid: int, wait: float) -> bool:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if popen.poll() is not None and not _group_alive(pgid):
            return True
        time.sleep(0.05)
    return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie leader still counts; look for a live member.
    for pid in _pids_in_group(pgid):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            return True
    return False


def _pids_in_group(pgid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            out.append(int(entry))
    return out


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU time of every live process in a group (nginx master + worker, ...)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in _pids_in_group(pgid):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / tick


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def cpu_times() -> tuple[int, int]:
    """(all CPU time, time stolen by the hypervisor) of the machine so far, in clock ticks."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return sum(fields[:8]), (fields[7] if len(fields) > 7 else 0)


def loadavg() -> float:
    try:
        with open("/proc/loadavg") as fh:
            return float(fh.read().split()[0])
    except OSError:
        return float("nan")


# ---- tools -----------------------------------------------------------------------------------

TOOL_PACKAGES = {
    "nginx": "nginx-light",
    "haproxy": "haproxy",
    "wrk": "wrk",
    "h2load": "nghttp2-client",
    "openssl": "openssl",
}


def which(tool: str) -> str | None:
    found = shutil.which(tool)
    if found:
        return found
    for d in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        cand = os.path.join(d, tool)
        if os.access(cand, os.X_OK):
            return cand
    return None


POLICY_RC = "/usr/sbin/policy-rc.d"


def ensure_tools(tools: list[str], log=print) -> tuple[dict[str, str | None], dict[str, str]]:
    """Find each tool; install the missing ones with apt-get when running as root.

    Returns ({tool: path or None}, {tool: why it is missing}). Services shipped by the
    packages are not started: a temporary policy-rc.d answers 101 unless one is already there.
    """
    paths = {t: which(t) for t in tools}
    missing = [t for t, p in paths.items() if p is None]
    reasons: dict[str, str] = {}
    if not missing:
        return paths, reasons
    pkgs = sorted({TOOL_PACKAGES[t] for t in missing})
    if os.geteuid() != 0:
        for t in missing:
            reasons[t] = f"{t} not found; install it with: sudo apt-get install {TOOL_PACKAGES[t]}"
        return paths, reasons
    if not which("apt-get"):
        for t in missing:
            reasons[t] = f"{t} not found and apt-get is not available"
        return paths, reasons
    log(f"installing {' '.join(pkgs)} with apt-get ...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    made_policy = False
    try:
        if not os.path.exists(POLICY_RC):
            with open(POLICY_RC, "w") as fh:
                fh.write("#!/bin/sh\n# written by vane bench/run.py while it installs packages\nexit 101\n")
            os.chmod(POLICY_RC, 0o755)
            made_policy = True
        up = subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, text=True, timeout=600)
        inst = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *pkgs],
                              env=env, capture_output=True, text=True, timeout=1200)
        detail = (inst.stderr or up.stderr).strip().splitlines()[-1:] if inst.returncode else []
    finally:
        if made_policy:
            os.unlink(POLICY_RC)
    for t in missing:
        paths[t] = which(t)
        if paths[t] is None:
            reasons[t] = f"{t}: apt-get install {TOOL_PACKAGES[t]} failed" + (f" ({detail[0]})" if detail else "")
    return paths, reasons
