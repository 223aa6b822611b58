"""Module-scoped sidecars for the CLI tests."""

from __future__ import annotations

from typing import Any

import pytest

from tests.admin.api import Stack, stack_factory

__all__ = ["stack_factory"]


@pytest.fixture(scope="module")
def stack(stack_factory: Any) -> Stack:
    """A sidecar in front of a fresh nats-server, for the CLI commands to talk to."""
    return stack_factory()
