"""Metrics: families present, text exposition parses, label cardinality capped."""

from prometheus_client.parser import text_string_to_metric_families

from vane.observe.metrics import OTHER, Metrics, status_class


def families(m):
    return {f.name: f for f in text_string_to_metric_families(m.render_prometheus().decode())}


def test_all_families_render_and_parse():
    m = Metrics()
    m.conn_opened("tcp 0.0.0.0:80")
    m.conn_opened("tcp 0.0.0.0:80")
    m.conn_closed("tcp 0.0.0.0:80")
    m.request("blog", 200, 0.01)
    m.request("blog", 503, 0.2)
    m.request(None, 404, 0.001)
    m.upstream_error("http://127.0.0.1:3000", "connect")
    m.plugin_error("auth")
    m.breaker("auth", True)
    m.reload("reloaded")
    m.floor_hit("max_conn_per_ip")
    fams = families(m)
    for name in ("vane_connections_active", "vane_connections", "vane_requests", "vane_request_duration_seconds",
                 "vane_upstream_errors", "vane_plugin_errors", "vane_breaker_open", "vane_reloads",
                 "vane_floor_hits"):
        assert name in fams, name
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    assert samples[("vane_connections_active", (("listener", "tcp 0.0.0.0:80"),))] == 1
    assert samples[("vane_connections_total", (("listener", "tcp 0.0.0.0:80"),))] == 2
    assert samples[("vane_requests_total", (("rule", "blog"), ("status_class", "5xx")))] == 1
    assert samples[("vane_requests_total", (("rule", "none"), ("status_class", "4xx")))] == 1
    assert samples[("vane_request_duration_seconds_count", (("rule", "blog"),))] == 2
    assert samples[("vane_breaker_open", (("plugin", "auth"),))] == 1


def test_cardinality_is_capped():
    m = Metrics(max_series=10)
    for i in range(50):
        m.request(f"rule{i}", 200, 0.01)
        m.upstream_error(f"up{i}", "timeout")
    m.flush()
    assert len(m.requests_total) == 11  # 10 + "other"
    fams = families(m)
    rules = {s.labels["rule"] for s in fams["vane_requests"].samples if s.name == "vane_requests_total"}
    assert len(rules) == 11 and OTHER in rules
    other = [s.value for s in fams["vane_requests"].samples
             if s.name == "vane_requests_total" and s.labels["rule"] == OTHER]
    assert other == [40]
    assert m.requests_total.overflowed == 40
    assert len(m.upstream_errors) == 11


def test_as_json_shape():
    m = Metrics()
    m.reload("failed")
    fams = {f["name"]: f for f in m.as_json()["families"]}
    reloads = fams["vane_reloads"]
    assert reloads["type"] == "counter" and reloads["help"]
    assert reloads["samples"] == [{"name": "vane_reloads_total", "labels": {"result": "failed"}, "value": 1.0}]


def test_registries_are_private():
    a, b = Metrics(), Metrics()
    a.reload("reloaded")
    assert "vane_reloads_total{" not in b.render_prometheus().decode()


def test_status_class():
    assert status_class(204) == "2xx"
    assert status_class(None) == "none"
    assert status_class(999) == "none"


def test_batched_durations_match_prometheus_observe():
    from prometheus_client import CollectorRegistry, Histogram

    values = [0.0, 0.001, 0.005, 0.01, 0.2, 5.0, 100.0, 0.0749]
    m = Metrics()
    for v in values:
        m.request("r", 200, v)
    m.flush()
    reg = CollectorRegistry()
    h = Histogram("vane_request_duration_seconds", "x", registry=reg)
    for v in values:
        h.observe(v)

    def samples(registry, labels):
        return {(s.name, s.labels.get("le")): s.value for f in registry.collect()
                if f.name == "vane_request_duration_seconds" for s in f.samples
                if not s.name.endswith("_created") and {k: v for k, v in s.labels.items() if k != "le"} == labels}

    assert samples(m.registry, {"rule": "r"}) == samples(reg, {})


def test_connection_counts_fold_into_the_families_on_every_read():
    m = Metrics()
    label = "tcp 127.0.0.1:9000"

    def read() -> tuple[float, float]:
        fams = families(m)
        s = {(x.name, x.labels.get("listener")): x.value for f in fams.values() for x in f.samples}
        return s[("vane_connections_total", label)], s[("vane_connections_active", label)]

    for _ in range(3):
        m.conn_opened(label)
    assert read() == (3, 3)
    m.conn_closed(label)
    m.conn_closed(label)
    assert read() == (3, 1)  # counted since the last read, added to what was folded before
    m.conn_opened(label)
    m.conn_closed(label)
    m.conn_closed(label)
    assert read() == (4, 0)
    assert m.as_json()["families"]  # reading twice in a row changes nothing
    assert read() == (4, 0)


def test_tallies_fold_by_status_class_when_the_batch_fills_and_count_every_request():
    from vane.observe.metrics import REQUEST_BATCH

    m = Metrics()
    for i in range(REQUEST_BATCH - 1):
        m.request("r", 200 + i % 3, 0.001)        # 200, 201, 202: one class
    assert m.requests_seen == REQUEST_BATCH - 1
    assert m.requests_total.child("r", "2xx")._value.get() == 0   # nothing folded yet
    m.request("r", 404, 0.3)                       # the batch is full: folded now
    assert m.requests_total.child("r", "2xx")._value.get() == REQUEST_BATCH - 1
    assert m.requests_total.child("r", "4xx")._value.get() == 1
    m.request(None, None, 0.0)
    assert m.requests_seen == REQUEST_BATCH + 1
    fams = families(m)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    assert samples[("vane_requests_total", (("rule", "none"), ("status_class", "none")))] == 1
    assert samples[("vane_request_duration_seconds_count", (("rule", "r"),))] == REQUEST_BATCH
    assert abs(samples[("vane_request_duration_seconds_sum", (("rule", "r"),))]
               - (0.001 * (REQUEST_BATCH - 1) + 0.3)) < 1e-9
