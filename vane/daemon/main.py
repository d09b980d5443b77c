"""vaned — the vane daemon (DESIGN.md §7).

Usage:
  vaned --config DIR [--check]
  vaned --version
  vaned --help

Options:
  --config DIR   Config directory: config.json, rules/*.json, certs/, .env (e.g. /etc/vaned).
  --check        Load and compile the config (certificates included), print the result, exit.
  --version      Print the version and exit.
  --help         Show this help.

Environment: VANE_* settings (see README), read from the OS environment and <DIR>/.env
(the OS environment wins). Signals: SIGHUP reloads, SIGUSR1 reopens the access log
(VANE_ACCESS_LOG), SIGTERM drains then exits 0, SIGINT closes at once. Documentation:
/usr/share/doc/vane/ (README.md, design.md: the contract, reference.md: flow-log fields and
metrics, troubleshooting.md), or docs/ in the source.
"""

from gevent import monkey

monkey.patch_all()

import logging  # noqa: E402
import sys  # noqa: E402

from docopt import DocoptExit, docopt  # noqa: E402

from vane import __version__  # noqa: E402

EX_USAGE = 64
HINT = "vaned: --config DIR is required, e.g. vaned --config /etc/vaned"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--help" in argv or "-h" in argv:
        print(__doc__.strip())
        return 0
    if "--version" in argv:
        print(f"vaned {__version__}")
        return 0
    if not any(a == "--config" or a.startswith("--config=") for a in argv):
        print(HINT, file=sys.stderr)
        return EX_USAGE
    try:
        args = docopt(__doc__, argv=argv, default_help=False)
    except DocoptExit as exc:
        print(f"{exc}\n{HINT}", file=sys.stderr)
        return EX_USAGE
    return run(args["--config"], check=args["--check"])


def run(config_dir: str, check: bool = False) -> int:
    from vane.config.errors import CompileFailed
    from vane.config.load import load_settings
    from vane.observe.hub import Hub
    from vane.observe.logging import setup_logging

    try:
        settings = load_settings(config_dir)
    except CompileFailed as exc:
        for err in exc.errors:
            print(f"vaned: {err}", file=sys.stderr)
        return 1
    hub = Hub()
    try:
        setup_logging(settings.log_level, settings.log_format, settings.log_file, hub)
    except (OSError, ValueError) as exc:
        print(f"vaned: cannot set up logging: {exc}", file=sys.stderr)
        return 1
    from vane.daemon.daemon import Daemon

    if settings.workers > 1 and not check:
        from vane.daemon.master import Master
        daemon: Daemon | Master = Master(config_dir, settings, hub)
    else:
        daemon = Daemon(config_dir, settings, hub)
    if check:
        try:
            graph = daemon.compile()
            daemon.link(graph)
            daemon.open_access_log(check_only=True)
        except CompileFailed as exc:
            for err in exc.errors:
                print(str(err), file=sys.stderr)
            return 1
        print(f"ok {graph.hash} ({len(graph.sources.rules)} rules, {len(graph.listeners)} listeners)")
        return 0
    try:
        daemon.boot()
    except CompileFailed as exc:
        for err in exc.errors:
            logging.getLogger("vane.daemon").error("config error: %s", err)
        return 1
    except RuntimeError as exc:  # the management socket belongs to a running daemon
        logging.getLogger("vane.daemon").error("%s", exc)
        return 1
    return daemon.run()


if __name__ == "__main__":
    sys.exit(main())
