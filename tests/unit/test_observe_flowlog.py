"""FlowLog: ring capacity, lazy age expiry, live fan-out, NDJSON file writer."""

import json

import gevent
import pytest

from vane.observe.flowlog import FlowLog


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def entry(i, ts):
    return {"ts": ts, "conn": f"c{i}", "rule": "r", "layer": "l4", "steps": [], "outcome": "finished"}


def test_capacity_keeps_the_newest():
    clock = Clock()
    fl = FlowLog(capacity=5, clock=clock)
    for i in range(12):
        fl.record(entry(i, clock.t))
    assert [e["conn"] for e in fl.recent(100)] == ["c7", "c8", "c9", "c10", "c11"]
    assert [e["conn"] for e in fl.recent(2)] == ["c10", "c11"]
    assert fl.recent(0) == []
    assert fl.recorded == 12


def test_entries_older_than_max_age_expire():
    clock = Clock(1000.0)
    fl = FlowLog(capacity=100, max_age=60.0, clock=clock)
    for i in range(3):
        fl.record(entry(i, clock.t))
    clock.t += 30
    fl.record(entry(3, clock.t))
    assert len(fl) == 4
    clock.t += 31  # the first three are 61 s old now
    assert [e["conn"] for e in fl.recent(10)] == ["c3"]
    clock.t += 100
    assert fl.recent(10) == []


def test_subscribers_get_entries_and_dropped_frames():
    fl = FlowLog()
    sub = fl.subscribe(maxsize=10)
    for i in range(25):
        fl.record(entry(i, 0))
    items = [sub.get(0) for _ in range(11)]
    assert items[-1] == {"dropped": 15}
    assert sub.dropped == 15
    sub.close()
    assert fl.subscribers == 0


def test_level():
    fl = FlowLog()
    assert fl.level == "trajectory" and not fl.debug
    fl.level = "debug"
    assert fl.debug
    with pytest.raises(ValueError):
        fl.level = "verbose"


def test_file_writer_writes_ndjson(tmp_path):
    path = tmp_path / "flow.ndjson"
    fl = FlowLog(file_path=str(path))
    for i in range(50):
        fl.record(entry(i, 1.0))
    fl.close()
    lines = path.read_text().splitlines()
    assert [json.loads(x)["conn"] for x in lines] == [f"c{i}" for i in range(50)]
    assert fl.file_dropped == 0


def test_file_writer_drops_when_behind(tmp_path):
    path = tmp_path / "flow.ndjson"
    fl = FlowLog(file_path=str(path), file_queue=10)
    for i in range(100):  # no yield: the writer greenlet cannot run meanwhile
        fl.record(entry(i, 1.0))
    assert fl.file_dropped == 90
    gevent.sleep(0.1)
    fl.close()
    assert len(path.read_text().splitlines()) == 10
    assert fl.stats()["file_dropped"] == 90


def test_file_writer_follows_logrotate(tmp_path):
    path = tmp_path / "flow.ndjson"
    fl = FlowLog(file_path=str(path))
    fl.record(entry(1, 1.0))
    assert wait_lines(path, 1)
    path.rename(tmp_path / "flow.ndjson.1")
    fl.record(entry(2, 1.0))
    fl.close()
    assert json.loads(path.read_text())["conn"] == "c2"
    assert json.loads((tmp_path / "flow.ndjson.1").read_text())["conn"] == "c1"


def wait_lines(path, n, timeout=2.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return True
        gevent.sleep(0.01)
    return False


def _walked():
    from vane.engine.trajectory import Trajectory
    traj = Trajectory()
    traj.rule = "blog"
    traj.steps.append(("/route", "route", "main", 0.0123))
    traj.steps.append(("/main/respond", "respond", "", 0.5))
    traj.note_missing("req.header.x-nope")
    traj.outcome = "finished"
    return traj


def test_a_walk_entry_is_built_when_read_and_keeps_what_it_was_given():
    import gc

    from vane.observe.flowlog import L4, L7, as_dict
    fl = FlowLog(clock=lambda: 10.0)
    traj = _walked()
    fl.record((5.0, L7, (traj.freeze(), 5.0, "c1", 3, "tcp 127.0.0.1:80", 200, "GET", "a.test", "/x",
                         "1.1", ("10.0.0.1", 4242), 0, 120, "finished", 0.0025)))
    fl.record((6.0, L4, (traj.freeze(), 6.0, "c1", "tcp 127.0.0.1:80", "finished", ("10.0.0.1", 4242),
                         77, 120, 1.5)))
    traj.note_error("later")              # after the record: not part of it
    traj.steps.append(("/late", "x", "", 1.0))
    for _ in range(6):                    # each collection stops tracking one level of tuples
        gc.collect()
    kept = list(fl._ring)
    assert not any(gc.is_tracked(e) for e in kept)   # no object graph for the collector to scan
    l7, l4 = (as_dict(e) for e in kept)
    assert l7 == {"rule": "blog", "outcome": "finished", "missing": ["req.header.x-nope"], "errors": [],
                  "steps": [{"node": "/route", "plugin": "route", "branch": "main", "ms": 0.012},
                            {"node": "/main/respond", "plugin": "respond", "branch": "", "ms": 0.5}],
                  "ts": 5.0, "conn": "c1", "request": "c1/3", "listener": "tcp 127.0.0.1:80", "layer": "l7",
                  "status": 200, "method": "GET", "host": "a.test", "path": "/x", "version": "1.1",
                  "remote": "10.0.0.1:4242", "bytes_in": 0, "bytes_out": 120, "ms": 2.5}
    assert l4["layer"] == "l4" and l4["status"] is None and l4["bytes_in"] == 77 and l4["ms"] == 1500.0
    assert len(l4["steps"]) == 2 and l4["errors"] == []
