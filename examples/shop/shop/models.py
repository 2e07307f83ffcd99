from django.db import models

import dbfleet


class Customer(models.Model):
    """On the shard of its id: ``DBFLEET["SHARDS"]["customers"]["keys"]["shop.Customer"]``."""

    id = models.BigIntegerField(primary_key=True)
    name = models.CharField(max_length=100)
    country = models.CharField(max_length=2)

    objects = dbfleet.ShardedManager()

    def __str__(self) -> str:
        return self.name


class Order(models.Model):
    """On its customer's shard: sharded by ``customer``, the same key as the customer.

    Its id is given when it is written, unique over every shard, and carries the
    customer's slot: ``Order.objects.get(pk=...)`` finds the shard from the id alone.
    """

    id = dbfleet.FleetIdField(primary_key=True)
    customer = models.ForeignKey(Customer, models.CASCADE)
    total = models.DecimalField(max_digits=8, decimal_places=2)
    placed = models.DateField()

    objects = dbfleet.ShardedManager()

    def __str__(self) -> str:
        return f"order {self.id}"
