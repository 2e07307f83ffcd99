"""A shop sharded by customer (tests/test_sharding.py turns the sharding on).

``Twin*`` models hold the same rows on one database, to compare answers with.
"""

from django.db import models

from dbfleet import FleetIdField, ShardedManager


class Customer(models.Model):
    id = models.BigIntegerField(primary_key=True)
    name = models.CharField(max_length=50)
    country = models.CharField(max_length=2)

    objects = ShardedManager()


class Order(models.Model):
    id = models.BigIntegerField(primary_key=True)
    customer = models.ForeignKey(Customer, models.CASCADE)
    status = models.CharField(max_length=10)
    total = models.DecimalField(max_digits=10, decimal_places=2)
    quantity = models.IntegerField(null=True)
    #: A reference model: every shard has every product.
    product = models.ForeignKey("Product", models.SET_NULL, null=True, related_name="orders")

    objects = ShardedManager()

    class Meta:
        ordering = ["status", "id"]


class TwinOrder(models.Model):
    id = models.BigIntegerField(primary_key=True)
    customer_id = models.BigIntegerField()
    status = models.CharField(max_length=10)
    total = models.DecimalField(max_digits=10, decimal_places=2)
    quantity = models.IntegerField(null=True)

    class Meta:
        ordering = ["status", "id"]


class Product(models.Model):
    """A reference model: a full copy on every shard."""

    id = models.BigIntegerField(primary_key=True)
    name = models.CharField(max_length=50)

    objects = ShardedManager()


class Country(models.Model):
    """A reference model with an auto-incremented id: the first copy's counter gives it."""

    name = models.CharField(max_length=50)

    objects = ShardedManager()


class Review(models.Model):
    """Sharded by its customer; deleted with its product, a reference model.

    Soft relations: where the group is not configured (the other tests), it is a
    model of ``default`` that refers to them.
    """

    id = models.BigIntegerField(primary_key=True)
    customer = models.ForeignKey(Customer, models.CASCADE, db_constraint=False)
    product = models.ForeignKey(
        Product, models.CASCADE, db_constraint=False, related_name="reviews"
    )

    objects = ShardedManager()


class Visit(models.Model):
    """Sharded by a text key."""

    id = models.BigIntegerField(primary_key=True)
    session = models.CharField(max_length=40)

    objects = ShardedManager()


class Account(models.Model):
    """Sharded by its own FleetIdField: a new account's slot is picked at random."""

    id = FleetIdField(primary_key=True)
    name = models.CharField(max_length=50)

    objects = ShardedManager()


class Ticket(models.Model):
    """Sharded by its account: its own FleetIdField id carries the account's slot."""

    id = FleetIdField(primary_key=True)
    account = models.ForeignKey(Account, models.CASCADE)
    subject = models.CharField(max_length=50)

    objects = ShardedManager()


class Receipt(models.Model):
    """Not sharded: FleetIdField ids from the counter of the database it is written to."""

    id = FleetIdField(primary_key=True)
    number = FleetIdField(unique=True)
    note = models.CharField(max_length=50, blank=True)
