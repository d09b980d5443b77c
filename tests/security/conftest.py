"""Fixtures for the hostile tests: the integration lab, a recording backend, a stock nginx origin."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.daemon_helpers import Lab, new_lab
from tests.http_helpers import Backend

from .origins import Nginx


@pytest.fixture
def lab() -> Iterator[Lab]:
    yield from new_lab()


@pytest.fixture
def backend() -> Iterator[Backend]:
    b = Backend("origin")
    yield b
    b.stop()


@pytest.fixture
def nginx(lab: Lab) -> Nginx:
    """A stock nginx origin on loopback with an access log of every request it served."""
    origin = Nginx(lab.base / "nginx")
    lab.on_close(origin.stop)
    return origin
