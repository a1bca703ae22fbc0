"""Shared fixtures. Tests never read the developer's `.env` or data directory."""

from __future__ import annotations

pytest_plugins = ["tests.support.fixtures"]
