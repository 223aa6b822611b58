"""Module-scoped sidecars for the HTTP ingest tests."""

from __future__ import annotations

from tests.admin.api import stack_factory

__all__ = ["stack_factory"]
