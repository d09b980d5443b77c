"""The servers of one bench run: backend nginx, nginx and haproxy as reference proxies, vaned.

All of them listen on free 127.0.0.1 ports chosen at start, run from one temporary directory,
and are stopped by :meth:`Procs.stop_all`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

from .procs import LOOPBACK, Proc, Procs, free_ports, port_open, tail

BENCH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_DIR = os.path.dirname(BENCH_DIR)
CONFIGS = os.path.join(BENCH_DIR, "configs")
VANED = os.path.join(REPO_DIR, ".venv", "bin", "vaned")
VANE = os.path.join(REPO_DIR, ".venv", "bin", "vane")
PYTHON = os.path.join(REPO_DIR, ".venv", "bin", "python")
CEILING = os.path.join(BENCH_DIR, "ceiling.py")
MIB = 1 << 20

PORT_NAMES = (
    "BACKEND_PORT",
    "NGINX_PORT", "NGINX_H2_PORT", "NGINX_TLS_PORT",
    "HAPROXY_PORT", "HAPROXY_H2_PORT", "HAPROXY_TLS_PORT", "HAPROXY_L4_PORT",
    "VANED_PORT", "VANED_RESPOND_PORT", "VANED_H2_PORT", "VANED_H2_RESPOND_PORT", "VANED_L4_PORT",
    "CEILING_PORT", "CEILING_RESPOND_PORT", "VANED_LOG_PORT",
)

# vaned rules (bench/configs/vaned-rules.json) and the ports they listen on.
VANED_RULE_PORTS = {
    "bench": "VANED_PORT",
    "bench-respond": "VANED_RESPOND_PORT",
    "bench-h2": "VANED_H2_PORT",
    "bench-h2-respond": "VANED_H2_RESPOND_PORT",
    "bench-l4": "VANED_L4_PORT",
}
L7_PROXY_RULES = ("bench", "bench-h2")
TLS_RULES = ("bench-h2", "bench-h2-respond")

# Security-floor settings the bench has to lift: every connection comes from 127.0.0.1.
VANED_ENV = {
    "VANE_MGMT_HTTP_PORT": "",
    "VANE_LOG_LEVEL": "warning",
    "VANE_SEC_MAX_CONNECTIONS_PER_IP": "20000",
    "VANE_SEC_MAX_CONNECTIONS": "100000",
    "VANE_SEC_TLS_HANDSHAKES_PER_IP": "1000000",
}


def render(name: str, values: dict, tls: bool) -> str:
    """Fill ``@NAME@`` placeholders of a template in bench/configs; keep or cut TLS blocks."""
    with open(os.path.join(CONFIGS, name)) as fh:
        text = fh.read()
    if tls:
        text = re.sub(r"^#@TLS_(BEGIN|END)@\n", "", text, flags=re.M)
    else:
        text = re.sub(r"^#@TLS_BEGIN@\n.*?^#@TLS_END@\n", "", text, flags=re.M | re.S)
    for key, value in values.items():
        text = text.replace(f"@{key}@", str(value))
    left = re.search(r"@[A-Z0-9_]+@", text)
    if left:
        raise ValueError(f"{name}: placeholder {left.group(0)} has no value")
    return text


class Lab:
    def __init__(self, tmp: str, procs: Procs, tools: dict, nofile: int, log=print) -> None:
        self.tmp = tmp
        self.procs = procs
        self.tools = tools
        self.nofile = nofile
        self.log = log
        self.ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True))
        self.running: dict[str, Proc] = {}
        self.down: dict[str, str] = {}       # server -> why it is not running
        self.vaned_rules: list[str] = []     # rules of the running vaned config
        self.vaned_missing: dict[str, str] = {}  # rule -> why it is not in the config
        self.tls = False
        self.tls_reason = ""
        self.vaned_dir = ""
        os.chmod(tmp, 0o755)  # nginx workers (user nobody when started as root) read www/
        self.values = {"DIR": tmp, **self.ports}

    # ---- files -----------------------------------------------------------------------------

    def make_files(self) -> None:
        www = os.path.join(self.tmp, "www")
        os.makedirs(www, mode=0o755)
        with open(os.path.join(www, "1m.bin"), "wb") as fh:
            fh.write(os.urandom(MIB))
        os.chmod(os.path.join(www, "1m.bin"), 0o644)
        upload = os.path.join(www, "upload")
        os.makedirs(upload)
        os.chmod(upload, 0o777)  # written by the backend's workers (user nobody when root)

    def make_cert(self) -> None:
        openssl = self.tools.get("openssl")
        if not openssl:
            self.tls_reason = "openssl not available"
            return
        cert, key = os.path.join(self.tmp, "cert.pem"), os.path.join(self.tmp, "key.pem")
        rc, _out, err = self.procs.run("openssl", [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", "/CN=bench.local",
            "-addext", "subjectAltName=DNS:bench.local", "-keyout", key, "-out", cert], timeout=30)
        if rc != 0:
            self.tls_reason = f"openssl req failed: {err.strip()[-200:]}"
            return
        pem = os.path.join(self.tmp, "cert+key.pem")
        with open(pem, "w") as out:
            for part in (cert, key):
                with open(part) as fh:
                    out.write(fh.read())
        for path in (cert, key, pem):
            os.chmod(path, 0o644)
        self.values.update(CERT=cert, KEY=key, PEM=pem)
        self.tls = True

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.tmp, name)
        with open(path, "w") as fh:
            fh.write(text)
        return path

    # ---- servers ---------------------------------------------------------------------------

    def _wait(self, name: str, proc: Proc, ports: list[int], timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        pending = list(ports)
        while pending and time.monotonic() < deadline:
            if not proc.alive():
                break
            if port_open(pending[0]):
                pending.pop(0)
                continue
            time.sleep(0.05)
        if pending:
            why = "exited" if not proc.alive() else f"not listening on {LOOPBACK}:{pending[0]}"
            log_tail = tail(proc.log) if proc.log else ""
            self.down[name] = f"{name} {why}" + (f": {log_tail.splitlines()[-1]}" if log_tail else "")
            self.procs.stop(proc)
            return False
        self.running[name] = proc
        return True

    def _nginx(self, name: str, template: str, ports: list[str]) -> None:
        exe = self.tools.get("nginx")
        if not exe:
            self.down[name] = "nginx not available"
            return
        conf = self.write(f"{name}.conf", render(template, self.values, self.tls))
        errlog = os.path.join(self.tmp, f"{name}.error.log")
        argv = [exe, "-p", self.tmp + "/", "-c", conf, "-e", errlog]
        rc, out, err = self.procs.run(f"{name}-check", [*argv, "-t", "-q"], timeout=30)
        if rc != 0:
            self.down[name] = f"{name} config rejected: {(err or out).strip().splitlines()[-1:]}"
            return
        proc = self.procs.start(name, argv, log=os.path.join(self.tmp, f"{name}.out"), nofile=self.nofile)
        proc.log = errlog if os.path.exists(errlog) else proc.log
        self._wait(name, proc, [self.ports[p] for p in ports])

    def start_backend(self) -> None:
        self._nginx("backend", "nginx-backend.conf", ["BACKEND_PORT"])

    def start_nginx(self) -> None:
        ports = ["NGINX_PORT"] + (["NGINX_H2_PORT", "NGINX_TLS_PORT"] if self.tls else [])
        self._nginx("nginx", "nginx-proxy.conf", ports)

    def start_haproxy(self) -> None:
        exe = self.tools.get("haproxy")
        if not exe:
            self.down["haproxy"] = "haproxy not available"
            return
        conf = self.write("haproxy.cfg", render("haproxy.cfg", self.values, self.tls))
        rc, out, err = self.procs.run("haproxy-check", [exe, "-c", "-q", "-f", conf], timeout=30)
        if rc != 0:
            self.down["haproxy"] = f"haproxy config rejected: {(err or out).strip().splitlines()[-1:]}"
            return
        proc = self.procs.start("haproxy", [exe, "-db", "-f", conf], log=os.path.join(self.tmp, "haproxy.out"),
                                nofile=self.nofile)
        ports = ["HAPROXY_PORT", "HAPROXY_L4_PORT"] + (["HAPROXY_H2_PORT", "HAPROXY_TLS_PORT"] if self.tls else [])
        self._wait("haproxy", proc, [self.ports[p] for p in ports])

    def start_ceiling(self) -> None:
        """The bare gevent + httptools pass-through and responder (bench/ceiling.py)."""
        if not os.access(PYTHON, os.X_OK):
            self.down["ceiling"] = f"{os.path.relpath(PYTHON, REPO_DIR)} missing: run `make install`"
            return
        argv = [PYTHON, CEILING, "--proxy", str(self.ports["CEILING_PORT"]),
                "--backend", f"{LOOPBACK}:{self.ports['BACKEND_PORT']}",
                "--respond", str(self.ports["CEILING_RESPOND_PORT"])]
        proc = self.procs.start("ceiling", argv, log=os.path.join(self.tmp, "ceiling.log"), nofile=self.nofile)
        self._wait("ceiling", proc, [self.ports["CEILING_PORT"], self.ports["CEILING_RESPOND_PORT"]])

    # ---- vaned -----------------------------------------------------------------------------

    def vaned_env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VANE_")}
        env.update(VANED_ENV)
        env["VANE_MGMT_UNIX"] = os.path.join(self.tmp, "vaned.sock")
        env["VANE_STATE_DIR"] = os.path.join(self.tmp, "vaned-state")
        return env

    def prepare_vaned(self) -> None:
        """Write the vaned config dir; drop the rules vaned cannot compile yet (the L7 proxy
        while it is being written), noting why, so that the other rows still run."""
        if not os.access(VANED, os.X_OK):
            self.down["vaned"] = f"{os.path.relpath(VANED, REPO_DIR)} missing: run `make install`"
            return
        cfg = os.path.join(self.tmp, "vaned")
        os.makedirs(os.path.join(cfg, "rules"), exist_ok=True)
        os.makedirs(os.path.join(self.tmp, "vaned-state"), exist_ok=True)
        with open(os.path.join(cfg, "config.json"), "w") as fh:
            fh.write(render("vaned-config.json", self.values, self.tls))
        values = dict(self.values)
        values.setdefault("CERT", "")
        values.setdefault("KEY", "")
        rules = json.loads(render("vaned-rules.json", values, self.tls))
        if not self.tls:
            for r in TLS_RULES:
                if self.tls_reason:  # else no TLS row was asked for
                    self.vaned_missing[r] = f"no TLS certificate ({self.tls_reason})"
            rules = [r for r in rules if r["rule"] not in TLS_RULES]
        attempts = [rules, [r for r in rules if r["rule"] not in L7_PROXY_RULES]]
        first_error = ""
        for i, candidate in enumerate(attempts):
            with open(os.path.join(cfg, "rules", "bench.json"), "w") as fh:
                json.dump(candidate, fh, indent=1)
            rc, out, err = self.procs.run("vaned-check", [VANED, "--config", cfg, "--check"],
                                          timeout=60, env=self.vaned_env())
            if rc == 0:
                self.vaned_rules = [r["rule"] for r in candidate]
                if i == 1:
                    for r in L7_PROXY_RULES:
                        if r in VANED_RULE_PORTS and r not in self.vaned_missing:
                            self.vaned_missing[r] = first_error
                self.vaned_dir = cfg
                return
            error = _last_line(err or out)
            first_error = first_error or f"vaned --check: {error}"
        self.down["vaned"] = first_error

    def start_vaned(self, name: str = "vaned", workers: int = 1) -> Proc | None:
        """vaned on the bench config (``workers`` > 1: a master and that many workers, up once
        every worker answers); running under ``name``."""
        if "vaned" in self.down or not self.vaned_rules:
            return None
        env = {**self.vaned_env(), "VANE_WORKERS": str(workers)}
        proc = self.procs.start(name, [VANED, "--config", self.vaned_dir], env=env,
                                log=os.path.join(self.tmp, f"{name}.log"), nofile=self.nofile)
        ports = [self.ports[VANED_RULE_PORTS[r]] for r in self.vaned_rules]
        if not self._wait(name, proc, ports, timeout=60):
            return None
        deadline = time.monotonic() + 60
        while workers > 1 and time.monotonic() < deadline:
            ws = (self.vaned_stats() or {}).get("workers") or []
            if len(ws) == workers and all(w["state"] == "serving" for w in ws):
                break
            time.sleep(0.2)
        return proc

    def vaned_stats(self) -> dict | None:
        """``vane stats --json`` of the running vaned (None if it does not answer)."""
        rc, out, _err = self.procs.run("vane-stats", [VANE, "stats", "--json"], timeout=20, env=self.vaned_env())
        try:
            return json.loads(out) if rc == 0 else None
        except ValueError:
            return None

    def start_vaned_log(self) -> Proc | None:
        """A second vaned, the ``bench`` rule alone on VANED_LOG_PORT, writing the access log
        (combined, to a file): against the first one's ``bench`` port, the access log's cost."""
        if "vaned" in self.down or "bench" not in self.vaned_rules:
            self.down["vaned-log"] = self.down.get("vaned") or "the bench rule is not in the vaned config"
            return None
        cfg = os.path.join(self.tmp, "vaned-log")
        os.makedirs(os.path.join(cfg, "rules"), exist_ok=True)
        shutil.copy(os.path.join(self.vaned_dir, "config.json"), os.path.join(cfg, "config.json"))
        with open(os.path.join(self.vaned_dir, "rules", "bench.json")) as fh:
            bench = next(r for r in json.load(fh) if r["rule"] == "bench")
        bench["listen"] = [f"{LOOPBACK}:{self.ports['VANED_LOG_PORT']}"]
        with open(os.path.join(cfg, "rules", "bench.json"), "w") as fh:
            json.dump([bench], fh, indent=1)
        env = self.vaned_env()
        env["VANE_MGMT_UNIX"] = os.path.join(self.tmp, "vaned-log.sock")
        env["VANE_ACCESS_LOG"] = os.path.join(self.tmp, "access.log")
        env["VANE_ACCESS_LOG_FORMAT"] = "combined"
        proc = self.procs.start("vaned-log", [VANED, "--config", cfg], env=env,
                                log=os.path.join(self.tmp, "vaned-log.log"), nofile=self.nofile)
        if not self._wait("vaned-log", proc, [self.ports["VANED_LOG_PORT"]], timeout=60):
            return None
        return proc

    def stop(self, name: str) -> None:
        proc = self.running.pop(name, None)
        if proc:
            self.procs.stop(proc)

    def pgid(self, name: str) -> int | None:
        proc = self.running.get(name)
        return proc.pid if proc else None

    def version(self, tool: str) -> str:
        exe = VANED if tool == "vaned" else self.tools.get(tool)
        if not exe:
            return "missing"
        args = {"nginx": ["-v"], "haproxy": ["-v"], "wrk": ["-v"], "h2load": ["--version"],
                "openssl": ["version"], "vaned": ["--version"]}[tool]
        try:
            r = subprocess.run([exe, *args], capture_output=True, text=True, timeout=10)
        except OSError as exc:
            return f"unknown ({exc})"
        return _first_line(r.stdout + r.stderr)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no output"


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0][:120] if lines else ""
