"""``vane shell``: an interactive prompt over the same commands (DESIGN.md §10).

prompt-toolkit drives the terminal; the process is gevent-patched, so prompt-toolkit's
asyncio loop waits in gevent's cooperative ``select`` and the status greenlet keeps running
while the prompt is idle (checked in a real pty by tests/integration/test_shell.py). The
status greenlet polls ``stats`` with a short timeout on its own connection, so a dead daemon
never freezes the prompt; the toolbar only reads its last result.
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import Any

import gevent
from prompt_toolkit import PromptSession
from prompt_toolkit.completion import NestedCompleter, PathCompleter
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.history import FileHistory, InMemoryHistory

import vane
from vane.cli import render
from vane.cli.args import USAGE, UsageError, make_client, parse
from vane.cli.commands import EXIT_OK, GET_TARGETS, UPSTREAM_ACTIONS, Context, run
from vane.mgmt.client import Client, DaemonError, Unreachable

__all__ = ["StatusPoller", "completer", "run_shell"]

HISTORY_FILE = "~/.vane_history"
POLL_SECS = 1.0
POLL_TIMEOUT = 0.8

SHELL_HELP = """\
Commands:
  ping | stats | reload | shutdown | reopen-logs
  compile <path> [--config DIR] [--daemon]
  get (config | listeners | connections | metrics | plugins | upstreams | certs)
  tail (flow | log)          follow until Ctrl-C, then back to the prompt
  upstream (drain | disable | enable) <group> <backend>
  help                       this text
  exit | quit | Ctrl-D       leave the shell
Add --json to any command for JSON output. Tab completes commands and arguments."""


def completer() -> NestedCompleter:
    """Completion for commands and their arguments."""
    return NestedCompleter.from_nested_dict({
        "ping": None, "stats": None, "reload": None, "shutdown": None, "reopen-logs": None,
        "compile": PathCompleter(expanduser=True),
        "get": {t: None for t in GET_TARGETS},
        "tail": {"flow": None, "log": None},
        "upstream": {a: None for a in UPSTREAM_ACTIONS},
        "help": None, "exit": None, "quit": None,
    })


class StatusPoller:
    """Keeps the latest ``stats`` (or the reason the daemon is unreachable) for the toolbar."""

    def __init__(self, client: Client, interval: float = POLL_SECS, timeout: float = POLL_TIMEOUT) -> None:
        self.client = client
        self.interval = interval
        self.timeout = timeout
        self.stats: dict | None = None
        self.reachable: bool | None = None
        self.changes: list[str] = []  # "went away" / "is back" messages not yet shown
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._loop)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
        self.client.close()

    def poll(self) -> None:
        try:
            self.stats = self.client.call("stats", timeout=self.timeout)
            up = True
        except (Unreachable, DaemonError, OSError):
            self.client.close()
            up = False
        if self.reachable is not None and up != self.reachable and len(self.changes) < 10:
            self.changes.append(f"vaned is back at {self.client.address}" if up
                                else f"vaned went away ({self.client.address}); retrying every second")
        self.reachable = up

    def _loop(self) -> None:
        while True:
            with gevent.Timeout(self.timeout * 2, False):
                self.poll()
            gevent.sleep(self.interval)

    def toolbar(self) -> FormattedText:
        if self.reachable is None:
            return FormattedText([("", " vaned: connecting...")])
        if not self.reachable:
            return FormattedText([("bg:ansired fg:ansiwhite", " vaned unreachable "),
                                  ("", f" {self.client.address} - retrying")])
        s = self.stats or {}
        conns = (s.get("connections") or {}).get("active", 0)
        workers = s.get("workers")
        serving = f" | {sum(w.get('state') == 'serving' for w in workers)}/{len(workers)} workers" if workers else ""
        return FormattedText([
            ("bg:ansigreen fg:ansiblack", " vaned up "),
            ("", f" uptime {render.duration(s.get('uptime_secs'))} | graph {str(s.get('graph_hash') or '-')[:12]}"
                 f" | {conns} connections{serving}"),
        ])


def _history() -> Any:
    path = os.path.expanduser(HISTORY_FILE)
    try:
        with open(path, "a"):
            pass
        return FileHistory(path)
    except OSError:
        return InMemoryHistory()


def run_shell(args: dict[str, Any]) -> int:
    """The REPL; returns 0 when the operator leaves."""
    poller = StatusPoller(make_client(args))
    session: PromptSession = PromptSession(
        history=_history(), completer=completer(), complete_while_typing=True,
        bottom_toolbar=poller.toolbar, refresh_interval=1.0,
    )

    def confirm(question: str) -> bool:
        try:
            answer = PromptSession().prompt(question)
        except (EOFError, KeyboardInterrupt):
            return False
        return answer.strip().lower() in ("y", "yes")

    shell_json = bool(args.get("--json"))
    ctx = Context(client_factory=lambda: make_client(args), json=shell_json, tty=sys.stdout.isatty(),
                  confirm=confirm)
    poller.poll()
    poller.changes.clear()
    poller.start()
    print(f"vane {vane.__version__} shell - talking to {poller.client.address}. Type help, or exit to leave.")
    if not poller.reachable:
        print("vaned is not reachable yet; the status bar shows when it answers.")
    try:
        while True:
            for msg in poller.changes:
                print(f"* {msg}")
            poller.changes.clear()
            try:
                line = session.prompt("vane> ")
            except KeyboardInterrupt:
                continue
            except EOFError:
                break
            words = _split(line)
            if words is None or not words:
                continue
            if words[0] in ("exit", "quit"):
                break
            if words[0] == "help":
                print(SHELL_HELP)
                continue
            if words[0] == "shell":
                print("already in the shell")
                continue
            try:
                cmd_args = parse(words)
            except UsageError:
                print(f"unknown or incomplete command: {line.strip()!r} (try help)")
                continue
            if cmd_args.get("--help"):
                print(USAGE)
                continue
            if any(cmd_args.get(k) for k in ("--socket", "--http", "--version")):
                print("connection options are set when starting the shell")
                continue
            ctx.json = shell_json or bool(cmd_args.get("--json"))
            try:
                run(cmd_args, ctx)
            except KeyboardInterrupt:
                ctx.close()  # a half-read answer must not be taken for the next one
                print("^C")
    finally:
        poller.stop()
        ctx.close()
    return EXIT_OK


def _split(line: str) -> list[str] | None:
    try:
        return shlex.split(line)
    except ValueError as e:
        print(f"cannot parse: {e}")
        return None

