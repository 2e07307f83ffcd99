"""Routers used by the tests."""

from __future__ import annotations

from typing import Any


class EverythingToDefault:
    """A router that answers every question, as some third-party routers do."""

    def db_for_read(self, model: Any, **hints: Any) -> str:
        return "default"

    def db_for_write(self, model: Any, **hints: Any) -> str:
        return "default"


class Silent:
    """A router with no opinion on anything."""

    def db_for_read(self, model: Any, **hints: Any) -> None:
        return None
