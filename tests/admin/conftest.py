"""Module-scoped sidecars for the admin API tests (one real nats-server and sidecar per module)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.admin.api import Stack, stack_factory

__all__ = ["stack_factory"]


@pytest.fixture(scope="module")
def stack(stack_factory: Any) -> Stack:
    """A sidecar with no admin token (loopback clients may change things) in front of a fresh nats-server."""
    return stack_factory()
