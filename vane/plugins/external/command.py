"""External plugin as a program: JSON on stdin, JSON on stdout (DESIGN.md §6).

The program must live under ``<config>/bin/``. Its environment is ``env`` from the
declaration plus PATH/LANG, never the daemon's: ``LD_*``, ``PYTHON*`` and secrets such as
``VANE_MGMT_HTTP_TOKEN`` do not leak. A program that outlives the timeout is killed, and so
is one whose output goes past the reply limit: at most ``MAX_REPLY + 1`` bytes of stdout are
ever read, and stderr is not kept.
"""

from __future__ import annotations

import os
from typing import IO

import gevent
from gevent import Timeout, subprocess

from .base import MAX_REPLY, ExternalError, ExternalPlugin

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
READ_CHUNK = 64 * 1024


class CommandPlugin(ExternalPlugin):
    """Runs the declared program once per call; owns nothing between calls."""

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
        feeder = gevent.spawn(_feed, proc.stdin, data)
        try:
            with Timeout(self.timeout, ExternalError(f"no reply within {self.timeout}s")):
                out = _read_reply(proc.stdout)
                proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            feeder.kill()
            _close(proc.stdin)
            _close(proc.stdout)
        if proc.returncode != 0:
            raise ExternalError(f"exit status {proc.returncode}")
        return out


def _feed(stdin: IO[bytes], data: bytes) -> None:
    """Write the request and close stdin; a program that exits without reading it is its own affair."""
    try:
        stdin.write(data)
        stdin.close()
    except OSError:  # EPIPE: the program closed its stdin; its reply (or exit status) tells the rest
        pass


def _close(pipe: IO[bytes]) -> None:
    try:
        pipe.close()
    except OSError:  # unflushed request bytes to a program that is gone
        pass


def _read_reply(stdout: IO[bytes]) -> bytes:
    """stdout up to EOF; past MAX_REPLY bytes an ExternalError (the caller kills the program)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = stdout.read1(min(READ_CHUNK, MAX_REPLY + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_REPLY:
            raise ExternalError(f"reply larger than {MAX_REPLY} bytes")
