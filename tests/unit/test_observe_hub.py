"""Hub / Subscription: bounded queues, drop counting in order, close semantics."""

import gevent
import pytest

from vane.observe.hub import Closed, Hub


def test_publish_reaches_every_subscriber():
    hub = Hub()
    a, b = hub.subscribe(10), hub.subscribe(10)
    hub.publish({"n": 1})
    assert a.get(0) == {"n": 1}
    assert b.get(0) == {"n": 1}
    assert hub.subscribers == 2


def test_slow_subscriber_drops_and_counts_in_order():
    hub = Hub()
    sub = hub.subscribe(maxsize=3)
    for i in range(10):
        hub.publish(i)
    assert len(sub) == 4  # 3 items + one dropped marker, never more
    assert sub.dropped == 7
    assert [sub.get(0) for _ in range(4)] == [0, 1, 2, {"dropped": 7}]
    hub.publish(10)
    hub.publish(11)
    assert sub.get(0) == 10
    assert sub.get(0) == 11
    assert sub.get(0) is None  # timeout


def test_drops_after_partial_drain_make_a_new_marker():
    hub = Hub()
    sub = hub.subscribe(maxsize=3)
    for i in range(5):
        hub.publish(i)
    assert [sub.get(0), sub.get(0)] == [0, 1]
    hub.publish(5)  # room again (the marker takes a slot)
    hub.publish(6)  # full -> a new marker after 5
    assert [sub.get(0) for _ in range(5)] == [2, {"dropped": 2}, 5, {"dropped": 1}, None]
    assert sub.dropped == 3


def test_close_wakes_a_blocked_reader_and_unsubscribes():
    hub = Hub()
    sub = hub.subscribe(5)
    reader = gevent.spawn(lambda: list(sub))
    gevent.sleep(0.01)
    hub.publish("x")
    gevent.sleep(0.01)
    sub.close("closed")
    assert reader.get(timeout=1) == ["x"]
    assert hub.subscribers == 0
    with pytest.raises(Closed) as info:
        sub.get(0)
    assert info.value.reason == "closed"
    hub.publish("ignored")
    assert len(sub) == 0


def test_hub_close_ends_all_with_reason():
    hub = Hub()
    subs = [hub.subscribe(1) for _ in range(3)]
    hub.close("shutdown")
    assert hub.subscribers == 0
    for sub in subs:
        with pytest.raises(Closed, match="shutdown"):
            sub.get(0)


def test_subscriber_limit():
    hub = Hub(max_subscribers=2)
    hub.subscribe()
    s = hub.subscribe()
    with pytest.raises(OverflowError):
        hub.subscribe()
    s.close()
    hub.subscribe()


def test_iter_with_timeout_yields_none_when_idle():
    hub = Hub()
    sub = hub.subscribe()
    it = sub.iter(timeout=0.01)
    assert next(it) is None
    hub.publish(1)
    assert next(it) == 1
