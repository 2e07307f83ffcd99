"""Orders in SQLite, and their fact table in embedded ClickHouse, kept in sync."""

from __future__ import annotations

from django.db import models

from dbfleet.analytics import SyncedModel


class Order(models.Model):
    customer = models.CharField(max_length=40)
    status = models.CharField(max_length=10)
    total = models.DecimalField(max_digits=10, decimal_places=2)
    day = models.DateField()

    objects: models.Manager[Order] = models.Manager()


class OrderFact(SyncedModel):
    """Order's copy in ClickHouse: its fields, a version and a deleted flag."""

    class Sync:
        source = "sales.Order"
