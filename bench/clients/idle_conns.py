"""Open N HTTP/1.1 keep-alive connections to one listener, send one request on each, read the
response, and keep them all open until told to stop. Used to measure the server's memory per
idle connection. Loopback only; bounded by N and by the parent.

    python idle_conns.py HOST PORT N HOST_HEADER

Protocol on stdout/stdin (one JSON line each):
  -> {"ready": true, "open": k, "failed": f, "seconds": s, "first_error": "..."}   after setting up
  <- any line on stdin: check how many are still open
  -> {"alive": k}   then close everything and exit
"""

from __future__ import annotations

import errno
import json
import resource
import select
import socket
import sys
import time

IN_FLIGHT = 200


def raise_nofile(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 100 if hard == resource.RLIM_INFINITY else min(n + 100, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def response_complete(buf: bytes) -> bool:
    head, sep, body = buf.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            return len(body) >= int(v)
    return True  # no length: the head is enough for this purpose


def main() -> None:
    host, port, n, host_header = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    raise_nofile(n)
    request = f"GET / HTTP/1.1\r\nHost: {host_header}\r\n\r\n".encode()
    ep = select.epoll()
    pending: dict[int, tuple[socket.socket, str, bytes]] = {}  # fd -> (sock, state, buffer)
    done: list[socket.socket] = []
    failed = 0
    first_error = ""
    started = 0
    t0 = time.monotonic()
    deadline = t0 + 120
    while (started < n or pending) and time.monotonic() < deadline:
        while started < n and len(pending) < IN_FLIGHT:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            rc = s.connect_ex((host, port))
            started += 1
            if rc not in (0, errno.EINPROGRESS):
                failed += 1
                first_error = first_error or f"connect: {errno.errorcode.get(rc, rc)}"
                s.close()
                continue
            pending[s.fileno()] = (s, "connecting", b"")
            ep.register(s.fileno(), select.EPOLLOUT)
        for fd, _ev in ep.poll(1.0):
            s, state, buf = pending[fd]
            try:
                if state == "connecting":
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, f"connect: {errno.errorcode.get(err, err)}")
                    s.send(request)  # a few bytes: fits the empty send buffer
                    pending[fd] = (s, "reading", b"")
                    ep.modify(fd, select.EPOLLIN)
                    continue
                chunk = s.recv(65536)
                if not chunk:
                    raise OSError(0, "closed by the server before the response completed")
                buf += chunk
                if response_complete(buf):
                    if not buf.startswith(b"HTTP/1.1 200"):
                        raise OSError(0, "status: " + buf.split(b"\r\n", 1)[0].decode("latin-1"))
                    ep.unregister(fd)
                    del pending[fd]
                    done.append(s)
                else:
                    pending[fd] = (s, state, buf)
            except OSError as exc:
                failed += 1
                first_error = first_error or str(exc)
                ep.unregister(fd)
                del pending[fd]
                s.close()
    for s, _state, _buf in pending.values():
        failed += 1
        s.close()
    print(json.dumps({"ready": True, "open": len(done), "failed": failed,
                      "seconds": round(time.monotonic() - t0, 3), "first_error": first_error}), flush=True)
    sys.stdin.readline()
    alive = 0
    for s in done:
        try:
            data = s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            alive += 1 if data else 0  # b"" = closed by the server
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    print(json.dumps({"alive": alive}), flush=True)
    for s in done:
        s.close()


if __name__ == "__main__":
    main()
