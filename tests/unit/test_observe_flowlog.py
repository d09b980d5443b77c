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
