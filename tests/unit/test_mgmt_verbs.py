"""Verb table: argument validation, error kinds, results, socket path order."""

import pytest

from tests.support.mgmt import HASH_A, FakeDaemon, flow_entry
from vane.mgmt.api import DaemonAPI
from vane.mgmt.paths import client_socket_paths, server_socket_path
from vane.mgmt.protocol import MgmtError, Request
from vane.mgmt.verbs import VERBS, Stream, dispatch

CONTRACT_VERBS = {"ping", "stats", "reload", "shutdown", "compile_dry_run", "get_config", "get_listeners",
                  "get_connections", "get_metrics", "get_plugins", "get_upstreams", "get_certs", "set_flow_log",
                  "set_upstream", "tail_flow", "tail_log", "reopen_logs"}


def call(d, verb, **args):
    return dispatch(d, Request(verb, args, "1"))


def kind_of(d, verb, **args):
    with pytest.raises(MgmtError) as info:
        call(d, verb, **args)
    return info.value


def test_verb_table_is_the_contract():
    assert set(VERBS) == CONTRACT_VERBS
    assert isinstance(FakeDaemon(), DaemonAPI)


@pytest.mark.parametrize("verb,args", [
    ("ping", {"x": 1}),
    ("compile_dry_run", {}),
    ("compile_dry_run", {"dir": 5}),
    ("compile_dry_run", {"dir": ""}),
    ("get_metrics", {"format": "xml"}),
    ("set_flow_log", {}),
    ("set_flow_log", {"level": "verbose"}),
    ("tail_flow", {"backlog": -1}),
    ("tail_flow", {"backlog": True}),
    ("tail_flow", {"backlog": 10 ** 6}),
    ("set_upstream", {"group": "api", "backend": "10.0.0.5:8080"}),
    ("set_upstream", {"group": "api", "backend": "10.0.0.5:8080", "state": "pause"}),
    ("set_upstream", {"group": "api", "backend": 5, "state": "drain"}),
    ("set_upstream", {"group": "", "backend": "10.0.0.5:8080", "state": "drain"}),
    ("set_upstream", {"group": "api", "backend": "10.0.0.5:8080", "state": "drain", "all": True}),
])
def test_bad_args(verb, args):
    assert kind_of(FakeDaemon(), verb, **args).kind == "BadRequest"


def test_unknown_verb():
    err = kind_of(FakeDaemon(), "frobnicate")
    assert err.kind == "UnknownVerb" and "ping" in err.fields["verbs"]


def test_results():
    d = FakeDaemon()
    assert call(d, "ping")["pong"] is True
    assert call(d, "stats")["graph_hash"] == HASH_A
    assert call(d, "reload") == {"status": "unchanged", "hash": HASH_A}
    assert call(d, "get_listeners")["listeners"][0]["address"] == "tcp 0.0.0.0:8080"
    assert call(d, "get_metrics")["text"].startswith("# HELP")
    assert call(d, "get_metrics", format="json")["families"]
    assert call(d, "set_flow_log", level="debug") == {"level": "debug"} and d.flow_log.debug
    assert call(d, "shutdown") == {"status": "draining"} and d.shutdown_called


def test_compile_failed_becomes_compile_error_with_all_errors():
    d = FakeDaemon()
    d.reload_fails = True
    err = kind_of(d, "reload")
    assert err.kind == "Compile"
    e = err.to_dict()
    assert (e["file"], e["path"]) == ("rules/20-api.json", "/0/flow")
    assert [x["path"] for x in e["errors"]] == ["/0/flow", "/listen/0"]


def test_handler_exception_becomes_internal():
    d = FakeDaemon()
    d.fail.add("get_certs")
    err = kind_of(d, "get_certs")
    assert err.kind == "Internal" and "exploded" in err.message


def test_tail_flow_with_backlog():
    d = FakeDaemon()
    for i in range(5):
        d.flow_log.record(flow_entry(i))
    stream = call(d, "tail_flow", backlog=2)
    assert isinstance(stream, Stream)
    assert [e["path"] for e in stream.backlog] == ["/post/3", "/post/4"]
    assert d.flow_log.subscribers == 1
    stream.subscription.close()
    assert d.flow_log.subscribers == 0


def test_too_many_streams_is_unavailable():
    d = FakeDaemon()
    d.log_hub.max_subscribers = 1
    call(d, "tail_log")
    assert kind_of(d, "tail_log").kind == "Unavailable"


def test_socket_paths():
    assert server_socket_path({"VANE_MGMT_UNIX": "/x.sock", "XDG_RUNTIME_DIR": "/run/user/1"}) == "/x.sock"
    assert server_socket_path({"XDG_RUNTIME_DIR": "/run/user/1"}) == "/run/user/1/vaned.sock"
    assert server_socket_path({}) == "/run/vaned/vaned.sock"
    assert client_socket_paths({"XDG_RUNTIME_DIR": "/run/user/1"}) == [
        "/run/user/1/vaned.sock", "/run/vaned/vaned.sock", "/var/run/vaned.sock"]
    assert client_socket_paths({"VANE_MGMT_UNIX": "/x.sock"})[0] == "/x.sock"


def test_set_upstream_names_what_it_cannot_find_as_a_bad_request():
    d = FakeDaemon()
    assert call(d, "set_upstream", group="api", backend="10.0.0.5:8080", state="drain")["state"] == "draining"
    err = kind_of(d, "set_upstream", group="web", backend="10.0.0.5:8080", state="drain")
    assert err.kind == "BadRequest" and err.message == 'set_upstream: no upstream group "web" (groups: api)'
    err = kind_of(d, "set_upstream", group="api", backend="10.9.9.9:1", state="enable")
    assert err.kind == "BadRequest" and "no backend" in err.message
    d.groups = [{"group": "api"}]
    assert call(d, "get_upstreams") == {"upstreams": d.get_upstreams(), "groups": [{"group": "api"}]}
