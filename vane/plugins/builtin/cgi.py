"""``cgi`` (DESIGN.md §6; RFC 3875 subset): run ``script`` for the request and stream its answer.

``script`` is fixed in the rule (never templated): a relative path resolves against the config
dir and must lie under ``<config>/bin/``; an absolute path is taken as the operator wrote it.
The environment is cleared and built from the request (the RFC 3875 meta-variables, one
``HTTP_*`` per header — never ``HTTP_PROXY`` — plus ``env``). ``script_name`` is the URL
prefix the script answers for; the rest of the path is ``PATH_INFO``. ``timeout`` (30 s) bounds
the run: no header block by then answers 504. ``max_output`` (64 MiB) bounds the body.
``uid``/``gid`` apply only when vaned may switch users (root, or CAP_SETUID and CAP_SETGID).
``Authorization`` is not passed as ``HTTP_AUTHORIZATION`` (Apache's default too); a rule that wants
it names it in ``env``, e.g. ``"HTTP_AUTHORIZATION": "{{req.header.authorization}}"``.
"""

from __future__ import annotations

import logging
import os

from vane.engine.outcome import FINISHED
from vane.engine.plugin import LinkEnv, Terminator
from vane.net.cgi_process import CgiError, CgiRun, CgiTimeout
from vane.net.http.message import Response

log = logging.getLogger("vane.cgi")

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_OUTPUT = 64 * 1024 * 1024
_SKIP_HEADERS = frozenset({"content-type", "content-length", "proxy", "authorization"})


def resolve_script(script: str, config_dir: str | None) -> str:
    """The program path; relative names must stay under ``<config>/bin/``."""
    if "{{" in script:
        raise ValueError("cgi: script must not be templated")
    if os.path.isabs(script):
        path = script
    else:
        base = os.path.realpath(os.path.join(config_dir or ".", "bin"))
        path = os.path.realpath(os.path.join(config_dir or ".", script))
        if not path.startswith(base + os.sep):
            raise ValueError(f"cgi: script {script!r} is not under {base}/")
    if not os.path.isfile(path):
        raise ValueError(f"cgi: script {path} does not exist")
    if not os.access(path, os.X_OK):
        raise ValueError(f"cgi: script {path} is not executable")
    return path


_CAP_SETGID, _CAP_SETUID = 6, 7


def can_switch_user() -> bool:
    """Root, or the capabilities a packaged vaned gets for uid/gid (CAP_SETUID + CAP_SETGID)."""
    if os.geteuid() == 0:
        return True
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    caps = int(line.split()[1], 16)
                    return bool(caps >> _CAP_SETUID & 1 and caps >> _CAP_SETGID & 1)
    except (OSError, ValueError):
        pass
    return False


class Cgi(Terminator):
    def __init__(self, node, env: LinkEnv) -> None:
        super().__init__(node, env)
        raw = node.input.raw
        self.script = resolve_script(raw["script"], env.config_dir)
        self.cwd = os.path.dirname(self.script)
        self.timeout = float(raw.get("timeout") or DEFAULT_TIMEOUT)
        self.max_output = int(raw.get("max_output") or DEFAULT_MAX_OUTPUT)
        may_switch = can_switch_user()
        self.uid = raw.get("uid") if may_switch else None
        self.gid = raw.get("gid") if may_switch else None
        if not may_switch and ("uid" in raw or "gid" in raw):
            log.info("cgi %s: uid/gid ignored (vaned runs neither as root nor with CAP_SETUID/CAP_SETGID)",
                     self.script)

    def terminate(self, ctx, args):
        req = ctx.request
        body = req.body
        if body.length is None:              # CGI needs CONTENT_LENGTH: buffer a chunked body
            ctx.read_body(body)
        env = self.environment(ctx, args)
        label = f"cgi {os.path.basename(self.script)}"
        try:
            run = CgiRun([self.script], env, self.cwd, self.timeout, self.max_output, self.uid, self.gid, label)
        except OSError as exc:
            ctx.trajectory.note_error(f"{label}: cannot start: {exc}")
            return ctx.respond_status(502)
        if body.length:
            run.feed(body)
        else:
            body.close()
            run.proc.stdin.close()
        try:
            status, headers, rest = run.read_head()
        except CgiTimeout as exc:
            run.kill()
            ctx.trajectory.note_error(f"{exc} -> 504")
            return ctx.respond_status(504)
        except CgiError as exc:
            run.kill()
            ctx.trajectory.note_error(f"{exc} -> 502")
            return ctx.respond_status(502)
        except BaseException:
            run.kill()
            raise
        ctx.response = Response(status, headers, run.body(rest))
        return FINISHED

    def environment(self, ctx, args) -> dict[str, str]:
        req = ctx.request
        conn = ctx.conn
        script_name = (args.get("script_name") or "").rstrip("/")
        path = req.path
        if script_name and (path == script_name or path.startswith(script_name + "/")):
            path_info = path[len(script_name):]
        else:
            path_info = path
        peer = conn.peer if conn is not None else ("", 0)
        local = conn.local if conn is not None else ("", 0)
        env = {
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_SOFTWARE": "vane",
            "SERVER_PROTOCOL": f"HTTP/{req.version}",
            "SERVER_NAME": req.host,
            "SERVER_PORT": str(local[1]),
            "REQUEST_METHOD": req.method,
            "REQUEST_SCHEME": req.scheme,
            "REQUEST_URI": req.uri,
            "QUERY_STRING": req.query,
            "SCRIPT_NAME": script_name,
            "SCRIPT_FILENAME": self.script,
            "PATH_INFO": path_info,
            "REMOTE_ADDR": str(peer[0]),
            "REMOTE_PORT": str(peer[1]),
            "PATH": "/usr/local/bin:/usr/bin:/bin",
        }
        if req.scheme == "https":
            env["HTTPS"] = "on"
        if req.body.length:
            env["CONTENT_LENGTH"] = str(req.body.length)
        ctype = req.headers.get("content-type")
        if ctype is not None:
            env["CONTENT_TYPE"] = ctype
        for k, v in req.headers.items_:
            name = k.decode("latin-1")
            if name in _SKIP_HEADERS or not name.replace("-", "").isalnum():
                continue
            key = "HTTP_" + name.upper().replace("-", "_")
            value = v.decode("latin-1")
            env[key] = env[key] + ", " + value if key in env else value
        if req.version == "2" and "HTTP_HOST" not in env and req.authority:
            env["HTTP_HOST"] = req.authority
        for k, v in (args.get("env") or {}).items():
            env[str(k)] = str(v)
        return env
