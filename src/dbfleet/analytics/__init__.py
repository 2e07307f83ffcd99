"""Analytics in ClickHouse: synced models, kept by ``manage.py fleet sync``.

``SyncedModel`` (and its queryset) load django-clickhouse-backend, so they are
imported on first use: the change capture on the source, the checks and ``fleet
status`` run in projects without ClickHouse too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dbfleet.analytics.models import SyncedManager, SyncedModel, SyncedQuerySet

__all__ = ["SyncedManager", "SyncedModel", "SyncedQuerySet"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from dbfleet.analytics import models

        return getattr(models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
