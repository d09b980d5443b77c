"""vane: the operator's client for a running vaned (DESIGN.md §10).

usage and exit codes are contract: 0 ok, 1 the daemon answered with an error, 2 the daemon
could not be reached, 64 usage.
"""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import sys  # noqa: E402
from typing import Any, Sequence  # noqa: E402

from docopt import DocoptExit, docopt  # noqa: E402

import vane  # noqa: E402
from vane.cli.commands import EXIT_OK, EXIT_USAGE, Context, run  # noqa: E402
from vane.mgmt.client import Client  # noqa: E402

__all__ = ["USAGE", "main", "make_client", "parse"]

USAGE = """\
vane - steer a running vaned.

Usage:
  vane [options] (ping | stats | reload | shutdown)
  vane [options] compile <path> [--config DIR] [--daemon]
  vane [options] get (config | listeners | connections | metrics | plugins | upstreams | certs)
  vane [options] tail (flow | log)
  vane [options] shell
  vane (-h | --help)
  vane --version

Commands:
  ping                 Check that vaned answers.
  stats                Uptime, graph hash, last reload, listener and connection counts.
  reload               Recompile the config and swap it in; prints "reloaded HASH" or
                       "unchanged HASH", or the compile errors (exit 1).
  shutdown             Drain and stop vaned (as SIGTERM).
  compile <path>       Compile a config directory or one rule file offline and print the
                       flow trees; --daemon asks the running vaned instead.
  get ...              Show daemon state.
  tail (flow | log)    Follow flow trajectories or the daemon log until Ctrl-C.
  shell                Interactive shell with completion, history and a status bar.

Options:
  --socket PATH        Management socket (default: $VANE_MGMT_UNIX, then
                       $XDG_RUNTIME_DIR/vaned.sock, /run/vaned/vaned.sock, /var/run/vaned.sock).
  --http URL           Talk HTTP to the management endpoint, e.g. http://127.0.0.1:3333.
  --token-env VAR      Environment variable holding the bearer token for --http
                       [default: VANE_MGMT_HTTP_TOKEN].
  --json               Machine-readable JSON output (NDJSON for tail).
  --config DIR         Config directory whose plugins a single rule file is compiled with.
  --daemon             Compile with the running daemon (compile_dry_run).
  -h --help            Show this help.
  --version            Show the version.

Exit codes: 0 ok, 1 the daemon answered with an error, 2 the daemon could not be reached, 64 usage.
"""


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
        token = os.environ.get(args.get("--token-env") or "VANE_MGMT_HTTP_TOKEN") or None
        return Client(http_url=args["--http"], token=token)
    return Client(socket_path=args.get("--socket") or None)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``vane``; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse(argv)
        if args.get("--http"):
            make_client(args)  # validates the URL
    except (UsageError, ValueError) as e:
        sys.stderr.write(f"{e}\n")
        return EXIT_USAGE
    if args.get("--help"):
        sys.stdout.write(USAGE)
        return EXIT_OK
    if args.get("--version"):
        sys.stdout.write(f"vane {vane.__version__}\n")
        return EXIT_OK
    if args.get("shell"):
        from vane.cli.shell import run_shell

        return run_shell(args)
    ctx = Context(client_factory=lambda: make_client(args), json=bool(args.get("--json")),
                  tty=sys.stdout.isatty())
    try:
        return run(args, ctx)
    except KeyboardInterrupt:
        return 130
    finally:
        ctx.close()


if __name__ == "__main__":
    sys.exit(main())
