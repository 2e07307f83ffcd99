"""Synced models with every problem dbfleet's checks find in them (tests/test_checks.py)."""

from __future__ import annotations

from clickhouse_backend import models as ch
from django.db import models

from dbfleet.analytics import SyncedModel


class Thing(models.Model):
    """A source, in 'default' (SQLite), with fields no ClickHouse type holds."""

    name = models.CharField(max_length=10)
    data = models.JSONField(default=dict)
    spent = models.DurationField(null=True)


class Event(ch.ClickhouseModel):  # type: ignore[misc]
    """A source in ClickHouse: no triggers capture its changes."""

    name = ch.StringField()

    class Meta:
        engine = ch.MergeTree(order_by=("id",))


class NoSource(SyncedModel):  # E050
    class Sync:
        source = "synced_broken.Thin"


class NoSync(SyncedModel):  # E050
    pass


class AllOfThing(SyncedModel):  # E051, twice: data and spent
    class Sync:
        source = "synced_broken.Thing"


class SomeOfThing(SyncedModel):  # E052
    class Sync:
        source = Thing
        fields = ["nmae"]


class DeclaredThing(SyncedModel):  # None: what it cannot map, it declares
    data = ch.StringField()

    class Sync:
        source = Thing
        fields = ["name", "data"]


class Misplaced(SyncedModel):  # E053: routed to 'default'
    class Sync:
        source = Thing
        fields = ["name"]


class FromClickHouse(SyncedModel):  # E054
    class Sync:
        source = Event
        fields = ["id"]
