"""HTTP/2 upload load: ROUNDS times, a fresh TLS connection (ALPN h2) and one PUT of SIZE MiB
of random bytes, written frame by frame as the peer's flow-control windows allow, then the
answer read to its end. Nagle's algorithm stays on (no TCP_NODELAY), as in the HTTP/2
clients that stall on small windows. Prints one JSON line: the seconds of each round.

    python h2_upload.py HOST PORT SIZE_MIB ROUNDS SERVER_NAME PATH
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions

TIMEOUT = 120.0


def upload(host: str, port: int, name: str, path: str, body: bytes) -> tuple[float, int]:
    """One upload; (seconds from connect to the end of the answer, status)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    started = time.perf_counter()
    deadline = time.monotonic() + TIMEOUT
    raw = socket.create_connection((host, port), timeout=TIMEOUT)
    sock = ctx.wrap_socket(raw, server_hostname=name)
    try:
        if sock.selected_alpn_protocol() != "h2":
            raise ConnectionError("the server did not select h2")
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(b":method", b"PUT"), (b":scheme", b"https"), (b":authority", name.encode()),
                                (b":path", path.encode()), (b"content-length", b"%d" % len(body))])
        sock.sendall(conn.data_to_send())
        view = memoryview(body)
        off = 0
        status = 0
        ended = False

        def read() -> None:
            nonlocal status, ended
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed by the server")
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    ended = True
            pending = conn.data_to_send()
            if pending:
                sock.sendall(pending)

        while off < len(body) and not ended:
            room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size, len(body) - off)
            if room <= 0:
                read()                      # wait for WINDOW_UPDATE
                continue
            conn.send_data(sid, view[off:off + room].tobytes(), end_stream=off + room == len(body))
            off += room
            sock.sendall(conn.data_to_send())   # frame by frame, as a streaming client writes
        while not ended:
            read()
        return time.perf_counter() - started, status
    finally:
        sock.close()


def main() -> None:
    host, port, size_mib, rounds, name, path = sys.argv[1:7]
    body = os.urandom(int(size_mib) * (1 << 20))
    times: list[float] = []
    statuses: list[int] = []
    last_error = ""
    for _ in range(int(rounds)):
        try:
            seconds, status = upload(host, int(port), name, path, body)
        except (OSError, ConnectionError, h2.exceptions.H2Error) as exc:
            last_error = f"{type(exc).__name__}: {exc}"
            continue
        times.append(seconds)
        statuses.append(status)
    print(json.dumps({"times": times, "statuses": statuses, "failed": int(rounds) - len(times),
                      "last_error": last_error, "bytes": len(body)}))


if __name__ == "__main__":
    main()
