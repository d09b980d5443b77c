"""The unix-socket management server with a fake daemon: real sockets, real client."""

import grp
import os
import socket
import stat

import gevent
import pytest

from tests.support.mgmt import (
    CERTS,
    HASH_A,
    HASH_B,
    LISTENERS,
    FakeDaemon,
    RawConn,
    flow_entry,
    short_tmpdir,
    sock_in,
    start_unix,
)
from tests.support.net import wait_until
from vane.mgmt.client import Client, DaemonError, Unreachable
from vane.mgmt.server_unix import MgmtStartError
from vane.mgmt.verbs import STREAM_QUEUE
from vane.observe.logging import HubHandler


@pytest.fixture
def tmpdir_short():
    yield from short_tmpdir()


@pytest.fixture
def server(daemon, tmpdir_short):
    srv = start_unix(daemon, sock_in(tmpdir_short))
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    with Client(socket_path=server.path, timeout=5) as c:
        yield c


def test_every_unary_verb(client, daemon):
    assert client.call("ping")["pong"] is True
    assert client.call("stats")["graph_hash"] == HASH_A
    assert client.call("reload") == {"status": "unchanged", "hash": HASH_A}
    daemon.next_hash = HASH_B
    assert client.call("reload") == {"status": "reloaded", "hash": HASH_B}
    assert client.call("compile_dry_run", {"dir": "/etc/vaned"})["hash"] == HASH_B
    assert client.call("get_config")["rules"][0]["rule"] == "blog"
    assert client.call("get_listeners") == {"listeners": LISTENERS}
    assert len(client.call("get_connections")["connections"]) == 2
    assert "vane_requests_total" in client.call("get_metrics", {"format": "prometheus"})["text"]
    assert client.call("get_metrics", {"format": "json"})["format"] == "json"
    assert client.call("get_plugins")["plugins"][1]["breaker"]["state"] == "open"
    assert client.call("get_upstreams")["upstreams"][0]["max_active"] == 256
    assert client.call("get_certs") == {"certs": CERTS}
    assert client.call("set_flow_log", {"level": "debug"}) == {"level": "debug"}
    assert daemon.flow_log.level == "debug"
    assert client.call("shutdown") == {"status": "draining"}
    assert daemon.shutdown_called


def test_errors_are_answered_and_the_connection_survives(client, daemon):
    daemon.reload_fails = True
    with pytest.raises(DaemonError) as info:
        client.call("reload")
    assert info.value.kind == "Compile"
    assert [e["file"] for e in info.value.error["errors"]] == ["rules/20-api.json", "rules/30-web.json"]
    with pytest.raises(DaemonError, match="BadRequest"):
        client.call("set_flow_log", {"level": "loud"})
    daemon.fail.add("get_certs")
    with pytest.raises(DaemonError, match="Internal"):
        client.call("get_certs")
    assert client.call("ping")["pong"]


def test_unknown_verb_and_bad_json_keep_the_connection(server):
    conn = RawConn(server.path)
    conn.send({"verb": "frobnicate", "request_id": "a"})
    f = conn.frame()
    assert f["request_id"] == "a" and f["result"] is None and f["error"]["kind"] == "UnknownVerb"
    conn.send(b"{not json\n")
    assert conn.frame()["error"]["kind"] == "BadRequest"
    conn.send(b"\n")  # blank lines are ignored
    conn.send({"verb": "ping", "args": {}, "request_id": "b"})
    f = conn.frame()
    assert f == {"request_id": "b", "result": f["result"], "error": None} and f["result"]["pong"]
    conn.close()


def test_many_requests_on_one_connection_in_order(server):
    conn = RawConn(server.path)
    conn.send(b"".join(b'{"verb": "ping", "request_id": %d}\n' % i for i in range(300)))
    ids = [conn.frame()["request_id"] for _ in range(300)]
    assert ids == list(range(300))
    conn.close()


def test_oversized_line_gets_too_large_and_close(server):
    conn = RawConn(server.path)

    def send_big():
        try:
            conn.sock.sendall(b"x" * (2 << 20))
        except OSError:
            pass  # the server stops reading and closes

    sender = gevent.spawn(send_big)
    f = conn.frame()
    assert f["error"]["kind"] == "TooLarge"
    try:
        assert conn.frame() is None  # closed
    except ConnectionResetError:
        pass  # closed with our unread bytes in its queue
    sender.join(2)
    conn.close()
    with Client(socket_path=server.path) as c:
        assert c.call("ping")["pong"]


def test_concurrent_clients(server):
    def worker(n):
        with Client(socket_path=server.path, timeout=5) as c:
            return [c.call("stats")["graph_hash"] for _ in range(20)]

    jobs = [gevent.spawn(worker, i) for i in range(20)]
    gevent.joinall(jobs, timeout=10, raise_error=True)
    assert all(j.value == [HASH_A] * 20 for j in jobs)


def test_tail_flow_streams_and_client_close_cancels(client, daemon):
    reader = client.stream("tail_flow")

    def produce():
        wait_until(lambda: daemon.flow_log.subscribers == 1)
        for i in range(3):
            daemon.flow_log.record(flow_entry(i))

    gevent.spawn(produce)
    got = []
    for data in reader:
        got.append(data["path"])
        if len(got) == 3:
            break
    assert got == ["/post/0", "/post/1", "/post/2"]
    reader.close()
    assert wait_until(lambda: daemon.flow_log.subscribers == 0)


def test_tail_flow_backlog_and_seq(server, daemon):
    for i in range(5):
        daemon.flow_log.record(flow_entry(i))
    conn = RawConn(server.path)
    conn.send({"verb": "tail_flow", "args": {"backlog": 2}, "request_id": "t"})
    frames = [conn.frame(), conn.frame()]
    assert [f["stream"]["seq"] for f in frames] == [1, 2]
    assert [f["stream"]["data"]["path"] for f in frames] == ["/post/3", "/post/4"]
    assert frames[0]["request_id"] == "t"
    conn.close()
    assert wait_until(lambda: daemon.flow_log.subscribers == 0)


def test_tail_log(client, daemon):
    import logging

    logger = logging.getLogger("vane.test.taillog")
    handler = HubHandler(daemon.log_hub)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        reader = client.stream("tail_log")
        gevent.spawn(lambda: wait_until(lambda: daemon.log_hub.subscribers == 1)
                     and logger.warning("bind failed", extra={"listener": "tcp 0.0.0.0:443"}))
        rec = next(iter(reader))
        assert rec["message"] == "bind failed" and rec["level"] == "WARNING"
        assert rec["listener"] == "tcp 0.0.0.0:443"
        reader.close()
        assert wait_until(lambda: daemon.log_hub.subscribers == 0)
    finally:
        logger.removeHandler(handler)


def test_slow_reader_gets_dropped_frame_and_queue_stays_bounded(server, daemon):
    conn = RawConn(server.path, timeout=10)
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn.send({"verb": "tail_flow", "request_id": "slow"})
    assert wait_until(lambda: daemon.flow_log.subscribers == 1)
    sub = daemon.flow_log.hub._subs[0]
    peak = 0
    total = 50000
    for start in range(0, total, 1000):  # the reader does not read meanwhile
        for i in range(start, start + 1000):
            daemon.flow_log.record(flow_entry(i))
        peak = max(peak, len(sub))
        gevent.sleep(0)
    assert peak <= STREAM_QUEUE + 1
    assert sub.dropped > 0
    received = dropped = 0
    seqs = []
    while received + dropped < total:
        f = conn.frame()
        data = f["stream"]["data"]
        seqs.append(f["stream"]["seq"])
        if "dropped" in data:
            dropped += data["dropped"]
        else:
            received += 1
    assert received + dropped == total and dropped == sub.dropped
    assert seqs == list(range(1, len(seqs) + 1))
    conn.close()
    assert wait_until(lambda: daemon.flow_log.subscribers == 0)


def test_stop_ends_streams_with_shutdown_and_removes_socket(daemon, tmpdir_short):
    srv = start_unix(daemon, sock_in(tmpdir_short))
    c = Client(socket_path=srv.path)
    reader = c.stream("tail_flow")
    it = iter(reader)
    gevent.spawn_later(0.1, srv.stop)
    assert list(it) == []
    assert reader.end_reason == "shutdown"
    assert not os.path.exists(srv.path)
    with pytest.raises(Unreachable):
        c.call("ping")


def test_socket_mode_and_group(daemon, tmpdir_short):
    group = grp.getgrgid(os.getgid()).gr_name
    srv = start_unix(daemon, sock_in(tmpdir_short), group=group)
    try:
        st = os.stat(srv.path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_gid == os.getgid()
    finally:
        srv.stop()


def test_unknown_group_refuses_to_start(daemon, tmpdir_short):
    with pytest.raises(MgmtStartError, match="group"):
        start_unix(daemon, sock_in(tmpdir_short), group="no-such-group-vane")
    assert not os.path.exists(sock_in(tmpdir_short))


def test_stale_socket_is_replaced(daemon, tmpdir_short):
    path = sock_in(tmpdir_short)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # the file stays, nobody listens: connect is refused
    assert os.path.exists(path)
    srv = start_unix(daemon, path)
    try:
        with Client(socket_path=path) as c:
            assert c.call("ping")["pong"]
    finally:
        srv.stop()


def test_live_daemon_refuses_second_start(server, daemon):
    with pytest.raises(MgmtStartError, match="already running"):
        start_unix(FakeDaemon(), server.path)
    with Client(socket_path=server.path) as c:  # the first one is untouched
        assert c.call("ping")["pong"]


def test_non_socket_file_is_not_replaced(daemon, tmpdir_short):
    path = sock_in(tmpdir_short)
    with open(path, "w") as f:
        f.write("precious")
    with pytest.raises(MgmtStartError, match="not a socket"):
        start_unix(daemon, path)
    assert open(path).read() == "precious"


def test_client_reconnects_after_daemon_restart(daemon, tmpdir_short):
    path = sock_in(tmpdir_short)
    srv = start_unix(daemon, path)
    c = Client(socket_path=path, timeout=2)
    assert c.call("ping")["pong"]
    srv.stop()
    with pytest.raises(Unreachable):
        c.call("ping")
    srv = start_unix(daemon, path)
    try:
        assert c.call("ping")["pong"]
    finally:
        c.close()
        srv.stop()
