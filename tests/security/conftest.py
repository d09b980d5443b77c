"""Fixtures for the hostile tests: the integration tests' ``lab`` (a real vaned and its config)."""

from tests.integration.conftest import lab  # noqa: F401 - the fixture, shared
