"""What the tests share, one module per kind of thing:

- ``net``: free ports, polling (``wait_until``), raw TCP clients, raw HTTP/1 exchanges, curl;
- ``daemon``: the vaned runner (``Vaned``), the ``Lab`` that owns a temporary config dir and
  everything started in it, the command lines of ``vaned`` and ``vane``;
- ``config``: rule and flow builders, config directories written to disk;
- ``backends``: loopback TCP and UDP servers and their handlers;
- ``http_backend``: the HTTP backend (HTTP/1.1, HTTP/2, TLS, WebSocket echo);
- ``tls``: a test CA with server and client contexts;
- ``nginx``: a stock nginx origin with an access log;
- ``h2raw``: a raw HTTP/2 client that sends malformed requests on purpose;
- ``mgmt``: a fake daemon behind the real management servers, and raw management clients;
- ``fakeplugins``: deterministic plugins for the executor and the external-plugin tests.

Nothing here keeps state between tests: every server, process and directory belongs to the
object or fixture that started it.
"""
