"""Fixtures shared by the integration tests."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.daemon_helpers import Lab, new_lab


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A temporary config dir and everything started in it (vaned processes, backends)."""
    yield from new_lab()
