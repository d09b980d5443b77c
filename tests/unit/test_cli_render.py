"""CLI rendering and argument parsing (no daemon needed)."""

import time

import pytest

from tests.support.mgmt import flow_entry
from vane.cli import render
from vane.cli.args import USAGE, UsageError, parse
from vane.cli.main import main


def test_table_plain_is_tab_separated():
    out = render.table([["a", 1, None], ["b", 2.5, ["x", "y"]]], ["name", "n", "list"], tty=False)
    assert out == "name\tn\tlist\na\t1\t-\nb\t2.5\tx,y"


def test_table_tty_is_aligned_with_bold_header():
    out = render.table([["alpha", 1], ["b", 22]], ["name", "n"], tty=True)
    lines = out.splitlines()
    assert lines[0] == f"{render.BOLD}NAME   N{render.RESET}"
    assert lines[1:] == ["alpha  1", "b      22"]
    assert "no rows" in render.table([], ["a"], tty=True, empty="no rows")


def test_duration_and_short_id():
    assert render.duration(3725) == "1h 2m 5s"
    assert render.duration(5) == "5s"
    assert render.duration(90061) == "1d 1h 1m"
    assert render.short_id("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b") == "2e3f4a5b"


def test_flow_line_l7_and_l4():
    ts = time.mktime((2026, 1, 2, 3, 4, 5, 0, 0, -1)) + 0.25
    line = render.flow_line(flow_entry(7, ts=ts))
    assert line == "03:04:05.250 00000007 blog GET blog.example.com/post/7 -> 200 finished 1.4ms"
    l4 = render.flow_line(flow_entry(1, ts=ts, layer="l4", method=None, rule=None, outcome="error",
                                     errors=["proxy: connect refused"], missing=["tls.sni"]))
    assert "(no rule) l4 tcp 0.0.0.0:8080 in=310 out=5120 error" in l4
    assert 'errors=["proxy: connect refused"]' in l4 and "missing=tls.sni" in l4
    assert "5 entries dropped" in render.flow_line({"dropped": 5})
    step = {"ts": ts, "event": "step", "conn": "x-12345678", "layer": "l7", "rule": "blog",
            "node": "/match", "plugin": "match", "branch": "true"}
    assert render.flow_line(step) == "03:04:05.250 12345678 blog step /match match -> true"


def test_log_line():
    line = render.log_line({"ts": 0.0, "level": "WARNING", "logger": "vane.net", "message": "bind failed",
                            "listener": "tcp 0.0.0.0:443", "attempt": 3})
    assert line.endswith('WARNING vane.net: bind failed listener="tcp 0.0.0.0:443" attempt=3')


def test_compile_error_line():
    err = {"kind": "Compile", "file": "rules/20-api.json", "path": "/0/flow", "message": "unknown plugin"}
    assert render.compile_error_line(err) == "rules/20-api.json: /0/flow: unknown plugin"
    assert render.compile_error_line({"message": "m"}) == "<config>: /: m"


def test_parse_commands():
    args = parse(["--json", "get", "listeners"])
    assert args["get"] and args["listeners"] and args["--json"]
    args = parse(["compile", "rules/a.json", "--config", "/etc/vaned"])
    assert args["<path>"] == "rules/a.json" and args["--config"] == "/etc/vaned"
    assert parse(["--http", "http://127.0.0.1:3333", "ping"])["--token-env"] == "VANE_MGMT_HTTP_TOKEN"


@pytest.mark.parametrize("argv", [[], ["frob"], ["get"], ["get", "nothing"], ["tail"], ["ping", "extra"],
                                  ["--socket", "/x", "--http", "http://h", "ping"], ["--bogus", "ping"]])
def test_usage_errors_exit_64(argv, capsys):
    with pytest.raises(UsageError):
        parse(argv)
    assert main(argv) == 64
    err = capsys.readouterr().err
    assert "Usage" in err or "mutually exclusive" in err


def test_bad_http_url_is_usage(capsys):
    assert main(["--http", "ftp://x", "ping"]) == 64


def test_help_and_version(capsys):
    assert main(["--help"]) == 0
    assert capsys.readouterr().out == USAGE
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("vane ")


@pytest.mark.parametrize("argv,usage,says", [
    (["reload", "--help"], "  vane [options] reload\n", "reloaded HASH"),
    (["reopen-logs", "-h"], "  vane [options] reopen-logs\n", "after logrotate moved it"),
    (["get", "listeners", "--help"], "  vane [options] get (config | listeners", "Show daemon state."),
    (["upstream", "drain", "--help"], "  vane [options] upstream (drain | disable | enable) <group> <backend>\n",
     "upstream disable G B"),
    (["--json", "compile", "--help"], "  vane [options] compile <path> [--config DIR] [--daemon]\n", "offline"),
    (["shell", "--help"], "  vane [options] shell\n", "Interactive shell"),
])
def test_command_help_prints_that_commands_usage(capsys, argv, usage, says):
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage:\n" + usage) and says in out and "--socket PATH" in out
    assert "vane [options] shell" not in out or argv[0] == "shell"
