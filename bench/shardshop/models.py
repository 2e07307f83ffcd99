"""``Customer`` and ``Order``, sharded by customer; ``plain`` reads them with no sharding.

The sharding benchmark puts them in a shard group of eight databases, and the
same rows, all of them, on one more database that no group knows (``shard_all``),
read through ``plain``.
"""

from __future__ import annotations

from django.db import models

from dbfleet import ShardedManager


class Customer(models.Model):
    id = models.BigIntegerField(primary_key=True)
    name = models.CharField(max_length=50)
    country = models.CharField(max_length=2)

    # The first manager is the default one (related managers, the sharded reads);
    # ``plain`` is Django's own, for the baselines, always with using().
    objects = ShardedManager()
    plain: models.Manager[Customer] = models.Manager()


class Order(models.Model):
    id = models.BigIntegerField(primary_key=True)
    customer = models.ForeignKey(Customer, models.CASCADE)
    status = models.CharField(max_length=10)
    total = models.DecimalField(max_digits=10, decimal_places=2)
    created = models.DateTimeField(db_index=True)

    objects = ShardedManager()
    plain: models.Manager[Order] = models.Manager()
