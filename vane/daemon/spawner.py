"""The worker spawner: a small process the master forks once, at boot, right after the config
is compiled and linked and before anything else starts (no management socket, no watcher, no
listener, no channel to any worker exists yet).

Every worker is forked from the spawner, so it starts from that clean state and shares the
boot graph and the libraries copy-on-write (the master froze them out of the collector),
whatever the master is doing at the time: a worker replaced after a crash, while management
streams are open and a reload is running, inherits none of it. The spawner reaps its
children and reports each exit, with its status, to the master. It ignores the signals the
master handles and ends when the master's end of the channel closes.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from typing import Any, Callable

import gevent
from gevent.event import Event

from .channel import Channel, ChannelClosed, Peer, pair

log = logging.getLogger("vane.daemon")

Entry = Callable[[int, int, socket.socket], None]   # (index, generation, channel) -> never returns


def describe_status(status: int) -> str:
    """A wait status as an operator reads it: "exit status 3", "killed by SIGKILL"."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"killed by {name}"
    if os.WIFEXITED(status):
        return f"exit status {os.WEXITSTATUS(status)}"
    return f"status {status}"


class Spawner:
    """The master's handle on the spawner process: ``spawn`` a worker, hear of its exit."""

    def __init__(self, entry: Entry, on_exit: Callable[[int, int], None], on_lost: Callable[[], None]) -> None:
        self.entry = entry
        self.on_exit = on_exit
        self.on_lost = on_lost
        self.pid = 0
        self.peer: Peer | None = None

    def start(self) -> Spawner:
        mine, theirs = pair()
        pid = os.fork()
        if pid == 0:   # the spawner
            try:
                mine.close()
                _Spawning(theirs, self.entry).run()
            finally:
                os._exit(0)
        theirs.close()
        self.pid = pid
        self.peer = Peer(Channel(mine), {}, on_event=self._event, on_close=self.on_lost, name="spawner").start()
        return self

    def spawn(self, index: int, generation: int, channel: socket.socket) -> int:
        """Fork worker ``index``; it talks to the master over ``channel`` (closed here once sent)."""
        assert self.peer is not None
        try:
            return self.peer.call("spawn", timeout=10.0, fds=[channel.fileno()], index=index, generation=generation)
        finally:
            channel.close()

    def _event(self, name: str, data: Any) -> None:
        if name == "exited":
            self.on_exit(data["pid"], data["status"])

    def stop(self) -> None:
        if self.peer is not None:
            self.peer.on_close = None
            self.peer.close()


class _Spawning:
    """The spawner process itself: owns its channel to the master, the greenlets that wait for
    its children, and nothing else."""

    def __init__(self, sock: socket.socket, entry: Entry) -> None:
        self.entry = entry
        self.greenlets: set[gevent.Greenlet] = set()
        self.done = Event()
        self.peer = Peer(Channel(sock), {"spawn": self.spawn}, on_close=self.done.set, name="spawner", inline=True)

    def run(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_IGN)   # the master decides; a terminal's ^C reaches it too
        self.peer.start()
        self.done.wait()
        for g in list(self.greenlets):
            g.kill(block=False)

    def spawn(self, index: int, generation: int, fds: list[int]) -> int:
        (fd,) = fds
        pid = os.fork()
        if pid == 0:   # the worker: leave the spawner behind, then never come back
            try:
                self._leave()
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_DFL)
                self.entry(index, generation, socket.socket(fileno=fd))
            except BaseException:  # noqa: BLE001 - a worker never returns into the spawner
                log.exception("worker %d failed to start", index)
                os._exit(70)
            os._exit(0)
        os.close(fd)
        waiter = gevent.spawn(self._wait, pid)
        self.greenlets.add(waiter)
        waiter.link(self.greenlets.discard)
        return pid

    def _leave(self) -> None:
        """In a new worker: stop the spawner's greenlets and close its channel. This runs in
        the spawner's reading greenlet (requests are answered inline), which from here on is
        the worker's main greenlet."""
        peer = self.peer
        peer.on_close = None
        peer.closed = True
        for g in list(self.greenlets):
            g.kill(block=False)
        self.greenlets.clear()
        peer.channel.close()

    def _wait(self, pid: int) -> None:
        try:
            _pid, status = os.waitpid(pid, 0)
        except ChildProcessError:
            status = 0
        try:
            self.peer.notify("exited", {"pid": pid, "status": status})
        except ChannelClosed:
            pass
