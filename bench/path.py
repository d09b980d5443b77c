#!/usr/bin/env python3
"""The request path in one process, for profiling: not a load test, not a test.

    .venv/bin/python bench/path.py [--requests N] [--profile] [--only proxy|respond|conn|tls|l4]

Runs vaned's real code (a compiled config, a Connection, the HTTP layer, the upstream pool)
on loopback sockets in this process: a client greenlet sends N keep-alive requests one after
another and a minimal backend greenlet answers each with "hello" (``conn``: the ``respond``
rule with a new connection per request; ``tls``: the same over TLS 1.3, a full handshake each;
``l4``: a new connection per request, relayed to the backend by an L4 ``proxy``). Prints the CPU time per
request (process CPU, so the client's and backend's small share is included) and, with
``--profile``, the top of a cProfile of the whole run. Compare figures of one machine only.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import cProfile  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import pstats  # noqa: E402
import socket  # noqa: E402
import ssl  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vane.config.settings import Settings  # noqa: E402
from vane.daemon.daemon import Daemon  # noqa: E402

REQUEST = b"GET / HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: path\r\nAccept: */*\r\n\r\n"
CLOSE_REQUEST = b"GET / HTTP/1.1\r\nHost: bench.local\r\nConnection: close\r\n\r\n"
ANSWER = (b"HTTP/1.1 200 OK\r\nServer: backend\r\nDate: Tue, 01 Dec 2026 00:00:00 GMT\r\n"
          b"Content-Type: text/plain\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello")


def backend(listener: socket.socket) -> None:
    def serve(conn: socket.socket) -> None:
        buf = b""
        while True:
            data = conn.recv(65536)
            if not data:
                return
            buf += data
            while b"\r\n\r\n" in buf:
                _, _, buf = buf.partition(b"\r\n\r\n")
                conn.sendall(ANSWER)

    while True:
        conn, _ = listener.accept()
        gevent.spawn(serve, conn)


def exchange(sock: socket.socket) -> None:
    sock.sendall(REQUEST)
    got = b""
    while not got.endswith(b"hello"):
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("vaned closed the connection")
        got += chunk


def client(port: int, n: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for _ in range(n):
        exchange(sock)
    sock.close()


def dial(port: int) -> socket.socket:
    sock = socket.socket()
    sock.connect(("127.0.0.1", port))      # no resolver (create_connection would ask one)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def connections(port: int, n: int) -> None:
    """One request per connection, closed by the client after the answer."""
    for _ in range(n):
        sock = dial(port)
        exchange(sock)
        sock.close()


def closed_connections(port: int, n: int, tls: ssl.SSLContext | None = None) -> None:
    """A new connection per request (``Connection: close``), read until vaned closes it."""
    for _ in range(n):
        sock = dial(port)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname="bench.local")
        sock.sendall(CLOSE_REQUEST)
        while sock.recv(65536):
            pass
        sock.close()


def tls_files(tmp: str) -> tuple[str, str, ssl.SSLContext]:
    """A throwaway P-256 certificate for bench.local, and a client context that takes it."""
    from cryptography.hazmat.primitives import serialization

    from vane.acme.challenges import self_signed
    cert, key = self_signed(("bench.local",))
    cert_path, key_path = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    with open(cert_path, "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    client = ssl.create_default_context(cafile=cert_path)
    client.minimum_version = ssl.TLSVersion.TLSv1_3
    client.set_alpn_protocols(["http/1.1"])
    return cert_path, key_path, client


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--only", choices=("proxy", "respond", "conn", "tls", "l4"))
    args = p.parse_args()
    up = socket.socket()
    up.bind(("127.0.0.1", 0))
    up.listen(64)
    gevent.spawn(backend, up)
    ports = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, "rules"))
        cert_path, key_path, client_tls = tls_files(tmp)
        rules = []
        for name in ("proxy", "respond", "conn", "tls", "l4"):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            ports[name] = s.getsockname()[1]
            s.close()
            backend_addr = f"127.0.0.1:{up.getsockname()[1]}"
            if name == "l4":
                rules.append({"rule": name, "listen": [f"127.0.0.1:{ports[name]}"],
                              "flow": {"proxy": {"input": {"target": backend_addr}}}})
                continue
            flow = ({"proxy": {"input": {"upstream": f"http://{backend_addr}"}}}
                    if name == "proxy" else {"respond": {"input": {"body": "hello"}}})
            rule = {"rule": name, "listen": [f"127.0.0.1:{ports[name]}"],
                    "match": {"req.host": "bench.local"}, "flow": flow}
            if name == "tls":
                rule["tls"] = {"cert": cert_path, "key": key_path}
            rules.append(rule)
        with open(os.path.join(tmp, "rules", "r.json"), "w") as fh:
            json.dump(rules, fh)
        settings = Settings.from_env({"VANE_MGMT_HTTP_PORT": "", "VANE_MGMT_UNIX": os.path.join(tmp, "s.sock"),
                                      "VANE_STATE_DIR": tmp, "VANE_LOG_LEVEL": "warning",
                                      "VANE_SEC_TLS_HANDSHAKES_PER_IP": "100000000"})
        daemon = Daemon(tmp, settings)
        daemon.boot()
        gevent.sleep(0.3)
        runs = {"l4": connections, "conn": closed_connections,
                "tls": lambda port, n: closed_connections(port, n, client_tls)}
        for name in (args.only,) if args.only else ("respond", "proxy", "conn", "tls", "l4"):
            run = runs.get(name, client)
            run(ports[name], 500)                       # warm up
            profiler = cProfile.Profile() if args.profile else None
            t0 = time.process_time()
            if profiler:
                profiler.enable()
            run(ports[name], args.requests)
            if profiler:
                profiler.disable()
            used = time.process_time() - t0
            print(f"{name:8s} {used / args.requests * 1e6:7.1f} µs CPU per request ({args.requests} requests)")
            if profiler:
                profiler.dump_stats(f"/tmp/path-{name}.prof")
                pstats.Stats(profiler).sort_stats("tottime").print_stats(0)
        daemon.close_now()


if __name__ == "__main__":
    main()
