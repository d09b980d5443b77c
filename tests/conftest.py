"""Test session setup and the fixtures every folder shares.

gevent patches sockets before anything else is imported. The helpers behind the fixtures are
in ``tests.support``.
"""
from gevent import monkey

monkey.patch_all()

from typing import Any, Iterator  # noqa: E402

import pytest  # noqa: E402

from tests.support.daemon import Lab, new_lab  # noqa: E402
from tests.support.http_backend import Backend  # noqa: E402
from tests.support.nginx import Nginx  # noqa: E402
from tests.support.redis import Redis  # noqa: E402


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A temporary config dir and everything started in it (vaned processes, backends)."""
    yield from new_lab()


@pytest.fixture
def backend() -> Iterator[Backend]:
    """An HTTP backend named ``origin`` on loopback (``tests.support.http_backend``)."""
    b = Backend("origin")
    yield b
    b.stop()


@pytest.fixture
def nginx(lab: Lab) -> Nginx:
    """A stock nginx origin on loopback with an access log of every request it served."""
    origin = Nginx(lab.base / "nginx")
    lab.on_close(origin.stop)
    return origin


@pytest.fixture
def redis_server(lab: Lab) -> Redis:
    """A real redis-server on loopback, stopped with the lab."""
    server = Redis(lab.base / "redis")
    lab.on_close(server.stop)
    return server


@pytest.fixture
def daemon() -> Any:
    """A fake daemon with canned state behind real management servers (``tests.support.mgmt``)."""
    from tests.support.mgmt import FakeDaemon

    return FakeDaemon()
