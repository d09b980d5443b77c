"""`vane shell` in a real pty (pexpect) against a fake daemon behind the real unix server."""

import os
import sys
import time

import pexpect
import pytest
from gevent import monkey

from tests.support.daemon import ROOT
from tests.support.mgmt import GROUPS, FakeDaemon, flow_entry, short_tmpdir, sock_in, start_unix
from tests.support.net import wait_until

CPR_REQUEST = r"\x1b\[6n"


class Shell:
    """A spawned shell; answers the terminal's cursor-position requests like a real terminal."""

    def __init__(self, sock, home):
        env = {"HOME": str(home), "TERM": "xterm", "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "PYTHONPATH": str(ROOT), "LANG": "C.UTF-8"}
        # gevent defers os.close() to its loop; ptyprocess closes its exec-error pipe and then
        # blocks reading it, so with the patched close the spawn never returns. (The patched
        # forkpty stays: it registers the child with gevent, which reaps children.)
        patched = os.close
        os.close = monkey.get_original("os", "close")
        try:
            self.p = pexpect.spawn(sys.executable, ["-m", "vane.cli.main", "--socket", sock, "shell"],
                                   cwd=str(ROOT), env=env, encoding="utf-8", timeout=10, dimensions=(30, 160))
        finally:
            os.close = patched

    def expect(self, pattern):
        while True:
            if self.p.expect([CPR_REQUEST, pattern]) == 0:
                self.p.send("\x1b[1;1R")
                continue
            return self.p.match

    def prompt(self):
        self.expect("vane>")

    def run(self, line):
        self.p.send(line + "\r")

    def close(self):
        if self.p.isalive():
            self.p.terminate(force=True)


@pytest.fixture
def env(tmp_path):
    daemon = FakeDaemon()
    for d in short_tmpdir():
        srv = start_unix(daemon, sock_in(d))
        shell = Shell(srv.path, tmp_path)
        try:
            yield daemon, srv, shell, tmp_path
        finally:
            shell.close()
            srv.stop()


def test_shell_session(env):
    daemon, srv, sh, home = env
    sh.expect("talking to")
    sh.prompt()

    # tab completion: "get li<TAB>" completes to "get listeners" (else the command would be unknown)
    sh.p.send("get li")
    time.sleep(0.3)
    sh.p.send("\t")
    sh.expect("steners")
    time.sleep(0.2)
    sh.p.send("\r")
    sh.expect("tcp 0.0.0.0:443")
    sh.expect("Address already in use")
    sh.prompt()

    sh.run("stats")
    sh.expect("1234 total")
    sh.prompt()

    # tail flow shows an entry recorded meanwhile; Ctrl-C goes back to the prompt
    sh.run("tail flow")
    assert wait_until(lambda: daemon.flow_log.subscribers == 1)
    daemon.flow_log.record(flow_entry(42))
    sh.expect(r"/post/42 -> .*200")
    sh.p.sendintr()
    sh.prompt()
    assert wait_until(lambda: daemon.flow_log.subscribers == 0)
    sh.run("ping")
    sh.expect("pong from vaned")
    sh.prompt()

    # shutdown asks first
    sh.run("shutdown")
    sh.expect(r"\[y/N\]")
    sh.run("n")
    sh.expect("not shutting down")
    sh.prompt()
    assert not daemon.shutdown_called

    sh.run("get nothing")
    sh.expect("unknown or incomplete command")
    sh.prompt()
    sh.run("help")
    sh.expect("exit | quit")
    sh.prompt()

    sh.run("exit")
    sh.p.expect(pexpect.EOF)
    sh.p.close()
    assert sh.p.exitstatus == 0
    history = (home / ".vane_history").read_text()
    assert "get listeners" in history and "tail flow" in history


def test_shell_survives_daemon_restart(env):
    daemon, srv, sh, _ = env
    sh.prompt()
    srv.stop()
    time.sleep(1.5)
    sh.run("ping")
    sh.expect("not reachable")
    sh.expect("went away")
    sh.prompt()
    srv2 = start_unix(daemon, srv.path)
    try:
        time.sleep(1.5)
        sh.run("")
        sh.expect("vaned is back")
        sh.prompt()
        sh.run("ping")
        sh.expect("pong from vaned")
        sh.prompt()
        sh.p.sendeof()  # Ctrl-D leaves
        sh.p.expect(pexpect.EOF)
    finally:
        srv2.stop()


def test_shell_lists_upstream_groups_and_drains_a_backend(env):
    daemon, srv, sh, home = env
    daemon.groups = GROUPS
    sh.expect("talking to")
    sh.prompt()
    sh.p.send("upstream d")
    time.sleep(0.3)
    sh.p.send("\t")
    sh.expect("isable|rain")                   # completion offers the words
    sh.p.send("\x15")                          # clear the line
    sh.run("upstream drain api 10.0.0.5:8080")
    sh.expect("api http://10.0.0.5:8080 draining")
    sh.prompt()
    assert daemon.admin_calls == [("api", "10.0.0.5:8080", "drain")]
    sh.run("upstream drain web 10.0.0.5:8080")
    sh.expect('BadRequest: set_upstream: no upstream group "web"')
    sh.prompt()
    sh.run("get upstreams")
    sh.expect(r"http://10\.0\.0\.6:8080 +down \(checks\)")
    sh.expect("http://127.0.0.1:3000")         # the pool's endpoints follow
    sh.prompt()
    sh.run("exit")
    sh.p.expect(pexpect.EOF)
