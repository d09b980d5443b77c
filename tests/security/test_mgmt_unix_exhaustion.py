"""The management socket under clients that hold connections: idle ones and streams. A
command always gets through; streams are capped with a clear error."""

from __future__ import annotations

import pytest

from tests.support.mgmt import RawConn, short_tmpdir, sock_in, start_unix
from tests.support.net import wait_until
from vane.mgmt.client import Client
from vane.mgmt.server_unix import MAX_CLIENTS, MAX_STREAMS

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def server(daemon):
    for d in short_tmpdir():
        srv = start_unix(daemon, sock_in(d))
        try:
            yield srv
        finally:
            srv.stop()


def test_idle_clients_cannot_block_a_command(server):
    idle = [RawConn(server.path) for _ in range(MAX_CLIENTS + 36)]
    try:
        with Client(socket_path=server.path, timeout=2) as c:
            assert c.call("ping")["pong"]
        assert len(server.slots) <= MAX_CLIENTS
        # the oldest idle connections made room
        idle[0].sock.settimeout(1)
        assert idle[0].frame() is None
        # a connection that was still open and kept waiting works as before
        idle[-1].send({"verb": "ping", "request_id": 1})
        assert idle[-1].frame()["result"]["pong"]
    finally:
        for conn in idle:
            conn.close()


def test_a_kept_alive_client_survives_being_closed_to_make_room(server):
    with Client(socket_path=server.path, timeout=2) as c:
        assert c.call("ping")["pong"]
        others = [RawConn(server.path) for _ in range(MAX_CLIENTS)]  # c's connection is the oldest
        try:
            assert wait_until(lambda: server.slots.evicted >= 1, timeout=2)
            assert c.call("stats")["graph_hash"]  # reconnects: the closed request was never read
        finally:
            for conn in others:
                conn.close()


def test_streams_are_capped_and_commands_still_get_through(server, daemon):
    streams = []
    try:
        for i in range(MAX_STREAMS):
            conn = RawConn(server.path)
            conn.send({"verb": "tail_log", "request_id": f"s{i}"})
            streams.append(conn)
        assert wait_until(lambda: daemon.log_hub.subscribers == MAX_STREAMS, timeout=3)
        extra = RawConn(server.path)
        extra.send({"verb": "tail_flow", "request_id": "one-more"})
        frame = extra.frame()
        assert frame["request_id"] == "one-more" and frame["error"]["kind"] == "Unavailable"
        assert "too many live streams" in frame["error"]["message"]
        assert daemon.flow_log.subscribers == 0  # refused before it subscribed
        extra.send({"verb": "ping", "request_id": "then"})  # the connection stays usable
        assert extra.frame()["result"]["pong"]
        extra.close()
        # idle connections on top of the streams: a command still gets through
        idle = [RawConn(server.path) for _ in range(MAX_CLIENTS)]
        try:
            with Client(socket_path=server.path, timeout=2) as c:
                assert c.call("get_listeners")["listeners"]
        finally:
            for conn in idle:
                conn.close()
        assert daemon.log_hub.subscribers == MAX_STREAMS  # no stream was closed to make room
        streams.pop().close()
        assert wait_until(lambda: daemon.log_hub.subscribers == MAX_STREAMS - 1)
        conn = RawConn(server.path)
        conn.send({"verb": "tail_log", "request_id": "again"})
        streams.append(conn)
        assert wait_until(lambda: daemon.log_hub.subscribers == MAX_STREAMS)
    finally:
        for conn in streams:
            conn.close()
