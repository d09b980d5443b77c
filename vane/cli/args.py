"""The vane command line: usage text (the §10 contract), parsing, and the client it selects.

Shared by ``vane`` (main.py) and ``vane shell``, which parses each line with the same usage.
"""

from __future__ import annotations

import os
import re
from typing import Any, Sequence

from docopt import DocoptExit, docopt

from vane.mgmt.client import Client
from vane.mgmt.token import DEFAULT_TOKEN_FILE, TOKEN_ENV, TOKEN_FILE_ENV, find_token

__all__ = ["COMMANDS", "USAGE", "UsageError", "command_help", "make_client", "parse"]

USAGE = """\
vane - steer a running vaned.

Usage:
  vane [options] (ping | stats | reload | shutdown | reopen-logs)
  vane [options] compile <path> [--config DIR] [--daemon]
  vane [options] get (config | listeners | connections | metrics | plugins | upstreams | certs)
  vane [options] tail (flow | log)
  vane [options] upstream (drain | disable | enable) <group> <backend>
  vane [options] shell
  vane (-h | --help)
  vane --version

Commands:
  ping                 Check that vaned answers.
  stats                Uptime, graph hash, last reload, listener and connection counts.
  reload               Recompile the config and swap it in; prints "reloaded HASH" or
                       "unchanged HASH", or the compile errors (exit 1).
  shutdown             Drain and stop vaned (as SIGTERM).
  reopen-logs          Open the access log file (VANE_ACCESS_LOG) again, in every worker,
                       after logrotate moved it (as SIGUSR1).
  compile <path>       Compile a config directory or one rule file offline and print the
                       flow trees; --daemon asks the running vaned instead.
  get ...              Show daemon state.
  tail (flow | log)    Follow flow trajectories or the daemon log until Ctrl-C.
  upstream drain G B   Backend B of upstream group G takes no new requests; its requests
                       in flight finish. B is its address (URL or host:port).
  upstream disable G B No traffic at all to B, and its health checks stop counting.
  upstream enable G B  B takes requests again (after its health checks pass, if it was
                       disabled). A state holds until a reload changes the group.
  shell                Interactive shell with completion, history and a status bar.

Options:
  --socket PATH        Management socket (default: $VANE_MGMT_UNIX, then
                       $XDG_RUNTIME_DIR/vaned.sock, /run/vaned/vaned.sock, /var/run/vaned.sock).
  --http URL           Talk HTTP to the management endpoint, e.g. http://127.0.0.1:3333.
  --token-env VAR      Environment variable holding the bearer token for --http
                       [default: VANE_MGMT_HTTP_TOKEN]. When it is unset, the token file
                       is read: $VANE_MGMT_HTTP_TOKEN_FILE, else /etc/vaned/mgmt-http.token
                       (readable by root and the vaneadm group).
  --json               Machine-readable JSON output (NDJSON for tail).
  --config DIR         Config directory whose plugins a single rule file is compiled with.
  --daemon             Compile with the running daemon (compile_dry_run).
  -h --help            Show this help.
  --version            Show the version.

Exit codes: 0 ok, 1 the daemon answered with an error, 2 the daemon could not be reached, 64 usage.
"""


COMMANDS = ("ping", "stats", "reload", "shutdown", "reopen-logs", "compile", "get", "tail", "upstream", "shell")


def _section(name: str) -> list[str]:
    """The lines of one section of USAGE ("Usage:", "Commands:", "Options:")."""
    lines = USAGE.splitlines()
    start = lines.index(name) + 1
    out = []
    for line in lines[start:]:
        if not line.strip():
            break
        out.append(line)
    return out


def command_help(command: str) -> str:
    """``vane COMMAND --help``: that command's usage lines, what it does, and the options."""
    usage = []
    for line in _section("Usage:"):
        words = re.findall(r"[\w-]+", line)
        if command not in words[2:]:
            continue
        if re.fullmatch(r"\s*vane \[options\] \([\w| -]+\)", line):   # one of several one-word commands
            line = f"  vane [options] {command}"
        usage.append(line)
    described, keep = [], False
    for line in _section("Commands:"):
        head = line[2:].split(" ", 1)[0] if line.startswith("  ") and not line.startswith("   ") else None
        if head is not None:
            keep = head == command or head.startswith(command + " ") or head.split("(")[0] == command
        if keep:
            described.append(line)
    options = "\n".join(_section("Options:"))
    return ("Usage:\n" + "\n".join(usage) + "\n\n" + ("\n".join(described) + "\n\n" if described else "")
            + "Options:\n" + options + "\n\nExit codes: 0 ok, 1 the daemon answered with an error, 2 the daemon "
            "could not be reached, 64 usage.\n")


class UsageError(Exception):
    """Bad command line; the message is the short usage."""


def parse(argv: Sequence[str]) -> dict[str, Any]:
    """docopt over ``argv``; raises UsageError (never exits)."""
    try:
        args = docopt(USAGE, list(argv), default_help=False, version=None)
    except DocoptExit as e:
        raise UsageError(str(e.code or "")) from None
    if args.get("--socket") and args.get("--http"):
        raise UsageError("--socket and --http are mutually exclusive")
    return dict(args)


def make_client(args: dict[str, Any]) -> Client:
    """The management client chosen by --socket / --http / --token-env."""
    if args.get("--http"):
        var = args.get("--token-env") or TOKEN_ENV
        found = find_token(os.environ.get(var), os.environ.get(TOKEN_FILE_ENV, DEFAULT_TOKEN_FILE), var)
        return Client(http_url=args["--http"], token=found.token)
    return Client(socket_path=args.get("--socket") or None)
