"""QUIC and HTTP/3 (DESIGN.md §3 ``tls.http3``) on aioquic's sans-I/O core, driven by gevent.

``certs``: the rule certificates as aioquic needs them, picked by SNI. ``session``: one QUIC
connection fed by the datagrams of its UDP session (timers, sending, flow control).
``h3server``: the HTTP/3 requests of one connection handed to the same L7 handler as
HTTP/1.1 and HTTP/2.
"""
