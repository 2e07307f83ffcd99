"""Sources in PostgreSQL and SQLite, and their copies in ClickHouse (the analytics configuration).

``Order`` lives in ``default`` (PostgreSQL), ``Ticket`` in ``books`` (SQLite); their
copies in ``warehouse`` (chDB). ``Ticket`` has a text key.
"""

from __future__ import annotations

import uuid

from clickhouse_backend import models as ch
from django.db import models

from dbfleet.analytics import SyncedModel


class Customer(models.Model):
    name = models.CharField(max_length=50)

    # Declared: type checking runs with settings that do not install this app.
    objects: models.Manager[Customer] = models.Manager()


class Order(models.Model):
    """Every kind of field a copy maps."""

    customer = models.ForeignKey(Customer, models.CASCADE, null=True)
    status = models.CharField(max_length=10, default="new")
    total = models.DecimalField(max_digits=10, decimal_places=2, default=0)
    quantity = models.IntegerField(null=True)
    paid = models.BooleanField(default=False)
    placed = models.DateField(null=True)
    updated = models.DateTimeField(auto_now=True)
    token = models.UUIDField(default=uuid.uuid4)
    weight = models.FloatField(default=0.0)
    note = models.TextField(blank=True, default="")

    objects: models.Manager[Order] = models.Manager()


class Ticket(models.Model):
    code = models.CharField(max_length=20, primary_key=True)
    subject = models.CharField(max_length=100)
    priority = models.PositiveSmallIntegerField(default=1)

    objects: models.Manager[Ticket] = models.Manager()


class OrderFact(SyncedModel):
    class Sync:
        source = "synced.Order"


class OrderTotal(SyncedModel):
    """A second copy of the same source, with a few of its fields, one declared here."""

    status = ch.StringField(low_cardinality=True)

    class Sync:
        source = Order
        fields = ["status", "total"]


class TicketFact(SyncedModel):
    class Sync:
        source = "synced.Ticket"
