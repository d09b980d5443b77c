"""The inotify watcher greenlet (DESIGN.md §7): config changes trigger a debounced reload.

Watches the config dir and its ``rules/`` and ``certs/`` dirs for files created, written,
moved and deleted. Editors that save through swap files produce bursts of events; the
debounce turns a burst into one reload, and a reload that finds the same graph hash changes
nothing. If inotify cannot be set up the daemon still reloads by signal or verb.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

import gevent
from gevent.socket import wait_read

log = logging.getLogger("vane.watcher")

WATCHED_SUBDIRS = ("rules", "certs", "wasm")


def _relevant(name: str) -> bool:
    if not name or name.startswith(".#") or name.endswith(("~", ".swp", ".swx", ".tmp")) or name == "4913":
        return False
    return True


class Watcher:
    def __init__(self, config_dir: str, on_change: Callable[[], object], debounce_ms: int) -> None:
        self.config_dir = config_dir
        self.on_change = on_change
        self.debounce = debounce_ms / 1000.0
        self._inotify = None
        self._wds: dict[int, str] = {}
        self._loop: gevent.Greenlet | None = None
        self._timer: gevent.Greenlet | None = None
        self.events = 0

    def start(self) -> bool:
        try:
            from inotify_simple import INotify, flags
        except ImportError as exc:  # pragma: no cover - a dependency
            log.warning("file watching unavailable (%s); reload with SIGHUP or `vane reload`", exc)
            return False
        try:
            self._inotify = INotify(nonblocking=True)
            self._flags = flags
            self._mask = (flags.CREATE | flags.CLOSE_WRITE | flags.MOVED_TO | flags.MOVED_FROM | flags.DELETE
                          | flags.ATTRIB | flags.DELETE_SELF | flags.MOVE_SELF)
            self._add(self.config_dir)
            for sub in WATCHED_SUBDIRS:
                self._add(os.path.join(self.config_dir, sub))
        except OSError as exc:
            log.warning("file watching unavailable (%s); reload with SIGHUP or `vane reload`", exc)
            self.stop()
            return False
        self._loop = gevent.spawn(self._run)
        return True

    def _add(self, path: str) -> None:
        if os.path.isdir(path) and path not in self._wds.values():
            wd = self._inotify.add_watch(path, self._mask)
            self._wds[wd] = path

    def stop(self) -> None:
        for g in (self._loop, self._timer):
            if g is not None:
                g.kill(block=False)
        if self._inotify is not None:
            try:
                self._inotify.close()
            except OSError:
                pass
            self._inotify = None

    def _run(self) -> None:
        fd = self._inotify.fileno()
        while self._inotify is not None:
            try:
                wait_read(fd)
                events = self._inotify.read(timeout=0)
            except OSError as exc:
                log.warning("file watching stopped: %s", exc)
                return
            fire = False
            for ev in events:
                path = self._wds.get(ev.wd, "")
                if ev.mask & self._flags.ISDIR and os.path.basename(path) != "rules":
                    # rules/ or certs/ created later: watch it too
                    self._add(os.path.join(path, ev.name))
                    fire = True
                    continue
                if ev.mask & (self._flags.DELETE_SELF | self._flags.MOVE_SELF | self._flags.IGNORED):
                    self._wds.pop(ev.wd, None)
                    fire = True
                    continue
                if _relevant(ev.name):
                    fire = True
            if fire:
                self.events += 1
                self._schedule()

    def _schedule(self) -> None:
        if self._timer is not None and not self._timer.dead:
            self._timer.kill(block=False)
        self._timer = gevent.spawn_later(self.debounce, self._fire)

    def _fire(self) -> None:
        try:
            self.on_change()
        except Exception:  # noqa: BLE001 - a failed reload is reported by the daemon itself
            log.debug("reload after file change failed", exc_info=True)
