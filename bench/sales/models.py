"""A sale (ten columns) in PostgreSQL, and its synced copy in chDB."""

from __future__ import annotations

from django.db import models

from dbfleet.analytics import SyncedModel


class Sale(models.Model):
    customer = models.BigIntegerField()
    status = models.CharField(max_length=10)
    total = models.DecimalField(max_digits=12, decimal_places=2)
    quantity = models.IntegerField()
    paid = models.BooleanField()
    day = models.DateField()
    created = models.DateTimeField()
    token = models.UUIDField()
    weight = models.FloatField()

    objects: models.Manager[Sale] = models.Manager()


class SaleFact(SyncedModel):
    class Sync:
        source = "sales.Sale"
