"""External plugin as a program: JSON on stdin, JSON on stdout (DESIGN.md §6).

The program must live under ``<config>/bin/``. Its environment is ``env`` from the
declaration plus PATH/LANG, never the daemon's: ``LD_*``, ``PYTHON*`` and secrets such as
``VANE_MGMT_HTTP_TOKEN`` do not leak. A program that outlives the timeout is killed.
"""

from __future__ import annotations

import os

from gevent import Timeout, subprocess

from .base import MAX_REPLY, ExternalError, ExternalPlugin

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


class CommandPlugin(ExternalPlugin):
    def __init__(self, node, env) -> None:
        super().__init__(node, env)
        bin_dir = os.path.realpath(os.path.join(env.config_dir or ".", "bin"))
        program = self.options["command"]
        path = os.path.realpath(program if os.path.isabs(program) else os.path.join(env.config_dir or ".", program))
        if os.path.commonpath([bin_dir, path]) != bin_dir:
            raise ValueError(f"command plugin {self.name}: {program} is not under {bin_dir}")
        self.argv = [path, *self.options.get("args", [])]
        extra = {k: v for k, v in (self.options.get("env") or {}).items()
                 if not k.startswith(("LD_", "PYTHON")) and not k.startswith("VANE_")}
        self.environ = {"PATH": SAFE_PATH, "LANG": "C.UTF-8", **extra}

    def call(self, data: bytes) -> bytes:
        proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=self.environ, close_fds=True)
        try:
            with Timeout(self.timeout, ExternalError(f"no reply within {self.timeout}s")):
                out, _ = proc.communicate(data)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode != 0:
            raise ExternalError(f"exit status {proc.returncode}")
        return out[: MAX_REPLY + 1]
