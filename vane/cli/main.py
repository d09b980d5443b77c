"""vane: the operator's client for a running vaned (DESIGN.md §10).

usage and exit codes are contract: 0 ok, 1 the daemon answered with an error, 2 the daemon
could not be reached, 64 usage.
"""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import sys  # noqa: E402
from typing import Sequence  # noqa: E402

import gevent  # noqa: E402

import vane  # noqa: E402
from vane.cli.args import COMMANDS, USAGE, UsageError, command_help, make_client, parse  # noqa: E402
from vane.cli.commands import EXIT_OK, EXIT_USAGE, Context, run  # noqa: E402

__all__ = ["USAGE", "main", "parse"]


def _quiet_ctrl_c() -> None:
    """Ctrl-C is how an operator ends ``tail``: let gevent's hub pass KeyboardInterrupt to the
    main greenlet without printing it as an error first."""
    hub = gevent.get_hub()
    if not issubclass(KeyboardInterrupt, hub.NOT_ERROR):
        hub.NOT_ERROR = (*hub.NOT_ERROR, KeyboardInterrupt)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``vane``; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    _quiet_ctrl_c()
    if "--help" in argv or "-h" in argv:
        command = next((a for a in argv if a in COMMANDS), None)
        sys.stdout.write(command_help(command) if command is not None else USAGE)
        return EXIT_OK
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
    except BrokenPipeError:  # e.g. `vane tail flow | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return EXIT_OK
    finally:
        ctx.close()


if __name__ == "__main__":
    sys.exit(main())
