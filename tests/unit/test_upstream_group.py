"""An upstream group's live state: backups, passive ejection, admin states, checks, retries."""

from __future__ import annotations

from collections import Counter

import pytest

from vane.compile.upstreams import compile_upstreams
from vane.engine.template import Limits
from vane.net.http.errors import UpstreamConnectError, UpstreamTimeout
from vane.net.upstream.group import DISABLED, DRAINING, ENABLED, Group, GroupError, passive_kind
from vane.net.upstream.pool import PoolTimeout


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def group(backends, clock=None, **options) -> Group:
    errors: list = []
    table = compile_upstreams({"upstreams": {"g": {"backends": backends, **options}}}, [], Limits(), errors)
    assert errors == []
    return Group(table.groups["g"], clock=clock or Clock())


URLS = ["http://10.0.0.1:80", "http://10.0.0.2:80", "http://10.0.0.3:80"]


def picks(g: Group, n: int, key=None) -> Counter:
    return Counter(g.choose(key).label for _ in range(n))


def test_backups_take_requests_only_while_no_primary_can():
    g = group([URLS[0], URLS[1], {"address": URLS[2], "backup": True}])
    assert set(picks(g, 30)) == {URLS[0], URLS[1]}
    g.set_admin(g.backends[0], DISABLED)
    assert set(picks(g, 30)) == {URLS[1]}
    g.set_admin(g.backends[1], DRAINING)
    assert set(picks(g, 30)) == {URLS[2]}
    g.set_admin(g.backends[1], ENABLED)
    assert set(picks(g, 30)) == {URLS[1]}


def test_passive_ejection_after_max_fails_in_a_row_and_back_after_fail_timeout():
    clock = Clock()
    g = group(URLS[:2], clock, passive={"max_fails": 2, "fail_timeout": 5})
    a, b = g.backends
    g.failed(a, "connect")
    g.answered(a, 200)                          # a success in between: the count starts again
    g.failed(a, "connect")
    assert a.state == "up"
    g.failed(a, "timeout")
    assert a.state == "down" and a.ejected_until == 1005.0
    assert set(picks(g, 10)) == {b.label}
    clock.now += 4.9
    assert set(picks(g, 10)) == {b.label}
    clock.now += 0.2
    assert set(picks(g, 10)) == {a.label, b.label}
    assert a.state == "up"


def test_5xx_counts_only_when_asked_and_max_fails_0_turns_passive_off():
    g = group(URLS[:2], passive={"max_fails": 1})
    g.answered(g.backends[0], 503)
    assert g.backends[0].state == "up"
    g = group(URLS[:2], passive={"max_fails": 1, "errors": ["5xx"]})
    g.failed(g.backends[0], "connect")          # not a counted kind
    assert g.backends[0].state == "up"
    g.answered(g.backends[0], 502)
    assert g.backends[0].state == "down"
    g = group(URLS[:2], passive={"max_fails": 0})
    for _ in range(10):
        g.failed(g.backends[0], "connect")
    assert g.backends[0].state == "up"


def test_no_backend_when_every_one_is_out_and_retry_after_says_when():
    clock = Clock()
    g = group(URLS[:2], clock, passive={"max_fails": 1, "fail_timeout": 7})
    g.failed(g.backends[0], "connect")
    clock.now += 2
    g.failed(g.backends[1], "connect")
    assert g.choose() is None
    assert g.retry_after() == 5
    g = group(URLS[:1], health={"interval": 2, "rise": 3})
    g.check_done(g.backends[0], "fail", 0.01, "refused")
    g.check_done(g.backends[0], "fail", 0.01, "refused")
    g.check_done(g.backends[0], "fail", 0.01, "refused")
    assert g.choose() is None and g.retry_after() == 6


def test_checks_bring_a_backend_down_after_fall_and_up_after_rise():
    g = group(URLS[:2], health={"fall": 2, "rise": 2})
    a = g.backends[0]
    g.check_done(a, "fail", 0.001, "status 500")
    assert a.state == "up" and a.check_fails == 1
    g.check_done(a, "timeout", 2.0, "no answer")
    assert a.state == "down" and a.results == {"ok": 0, "fail": 1, "timeout": 1}
    g.check_done(a, "ok", 0.001, None)
    assert a.state == "down"
    g.check_done(a, "ok", 0.001, None)
    assert a.state == "up" and a.latency == 0.001 and a.last_check is not None


def test_disabled_backends_checks_do_not_count_and_enabling_needs_rise():
    g = group(URLS[:2], health={"fall": 1, "rise": 2})
    a = g.backends[0]
    g.set_admin(a, DISABLED)
    g.check_done(a, "fail", 0.001, "refused")
    assert a.healthy and a.results["fail"] == 0 and a.state == "disabled"
    g.set_admin(a, ENABLED)
    assert a.state == "down"                    # checked again before it gets traffic
    g.check_done(a, "ok", 0.001, None)
    g.check_done(a, "ok", 0.001, None)
    assert a.state == "up"


def test_draining_keeps_checks_and_in_flight_counts():
    g = group(URLS[:2], health={"fall": 1})
    a = g.backends[0]
    a.begin()
    g.set_admin(a, DRAINING)
    assert a.state == "draining" and a.active == 1
    assert set(picks(g, 10)) == {URLS[1]}
    g.check_done(a, "fail", 0.001, "refused")
    assert a.results["fail"] == 1 and not a.healthy
    a.end()
    a.end()
    assert a.active == 0


def test_hash_keeps_keys_on_their_backend_and_moves_a_drained_ones_only():
    g = group(URLS, balance="hash", hash_key="{{req.cookie.s}}")
    keys = [f"user{i}" for i in range(3000)]
    before = {k: g.choose(k).label for k in keys}
    assert len(set(before.values())) == 3
    g.set_admin(g.backends[1], DRAINING)
    after = {k: g.choose(k).label for k in keys}
    for k in keys:
        if before[k] != URLS[1]:
            assert after[k] == before[k]
        else:
            assert after[k] != URLS[1]
    assert g.choose("").label in URLS            # no key: balanced like round robin


def test_retries_go_elsewhere_then_to_backups():
    g = group([URLS[0], URLS[1], {"address": URLS[2], "backup": True}])
    a, b, c = g.backends
    assert g.choose_other(None, [a]) is b
    assert g.choose_other(None, [a, b]) is c     # every primary failed this request
    assert g.choose_other(None, [a, b, c]) is None
    h = group(URLS, balance="hash", hash_key="{{conn.ip}}")
    first = h.choose("k")
    assert h.choose_other("k", [first]) not in (first, None)


def test_least_conn_group_counts_in_flight():
    g = group(URLS[:2], balance="least_conn")
    a = g.choose()
    a.begin()
    assert g.choose() is not a
    a.end()


def test_weights_in_round_robin():
    g = group([{"address": URLS[0], "weight": 3}, URLS[1]])
    assert picks(g, 400) == {URLS[0]: 300, URLS[1]: 100}


def test_find_by_address_authority_or_url():
    g = group(["http://10.0.0.1:80", "https://10.0.0.1:8443/base", "unix:/run/app.sock"])
    assert g.find("http://10.0.0.1:80") is g.backends[0]
    assert g.find("10.0.0.1:80") is g.backends[0]
    assert g.find("10.0.0.1:8443") is g.backends[1]
    assert g.find("/run/app.sock") is g.backends[2]
    with pytest.raises(LookupError, match="no backend"):
        g.find("10.0.0.9:80")
    l4 = group(["[::1]:5432", "db.internal:5432"])
    assert l4.find("[::1]:5432").host == "::1"
    twin = group(["http://10.0.0.1:80/a", "http://10.0.0.1:80/b"])
    with pytest.raises(LookupError, match="several"):
        twin.find("10.0.0.1:80")


def test_a_bad_backend_url_names_its_place():
    errors: list = []
    table = compile_upstreams({"upstreams": {"g": {"backends": ["http://ok:1", "http://bad:99999"]}}}, [],
                              Limits(), errors)
    with pytest.raises(GroupError) as info:
        Group(table.groups["g"])
    assert info.value.where == ("config.json", "/upstreams/g/backends/1")


def test_passive_kinds():
    assert passive_kind(UpstreamConnectError("x")) == "connect"
    assert passive_kind(UpstreamTimeout("x")) == "timeout"
    assert passive_kind(PoolTimeout("x")) is None     # our own limit, not the backend's fault


def test_a_thousand_backends_cost_linear_state():
    g = group([f"http://10.0.{i // 250}.{i % 250 + 1}:80" for i in range(1000)], balance="hash",
              hash_key="{{conn.ip}}")
    assert g.rings[0].size == 100 * 1000
    for b in g.backends[:990]:
        g.set_admin(b, DISABLED)
    assert {g.choose(f"k{i}").index for i in range(2000)} <= set(range(990, 1000))
    assert g.ring.size == 100 * 10                # the filtered ring: one binary search per pick
