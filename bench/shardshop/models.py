"""``Customer`` and ``Order``, sharded by customer; ``plain`` reads them with no sharding.

``Customer`` is keyed by its own id (hashed); ``Order`` by its customer, with a
``FleetIdField`` primary key whose values carry the customer's slot.

The sharding benchmark puts them in a shard group of eight databases, and the
same rows, all of them, on one more database that no group knows (``shard_all``),
read through ``plain``.
"""

from __future__ import annotations

from django.db import models

from dbfleet import FleetIdField, ShardedManager


class Customer(models.Model):
    id = models.BigIntegerField(primary_key=True)
    name = models.CharField(max_length=50)
    country = models.CharField(max_length=2)

    # The first manager is the default one (related managers, the sharded reads);
    # ``plain`` is Django's own, for the baselines, always with using().
    objects = ShardedManager()
    plain: models.Manager[Customer] = models.Manager()


class Order(models.Model):
    # Carries its customer's slot: get(pk=...) finds the shard from the id alone.
    id = FleetIdField(primary_key=True)
    customer = models.ForeignKey(Customer, models.CASCADE)
    status = models.CharField(max_length=10)
    total = models.DecimalField(max_digits=10, decimal_places=2)
    created = models.DateTimeField(db_index=True)

    objects = ShardedManager()
    plain: models.Manager[Order] = models.Manager()
