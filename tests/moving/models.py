"""Not routed: migrated on ``default``; the tests make their tables on ``books`` and ``loans``."""

from __future__ import annotations

from django.db import models


class Maker(models.Model):
    name = models.CharField(max_length=50)
    #: Makers and items point to each other: a cycle of foreign keys.
    flagship = models.ForeignKey("Item", models.SET_NULL, null=True, related_name="+")


class Tag(models.Model):
    label = models.CharField(max_length=30)


class Item(models.Model):
    maker = models.ForeignKey(Maker, models.CASCADE, related_name="items")
    parent = models.ForeignKey("self", models.SET_NULL, null=True, related_name="children")
    name = models.CharField(max_length=100)
    price = models.DecimalField(max_digits=10, decimal_places=2)
    made = models.DateTimeField(null=True)
    day = models.DateField(null=True)
    token = models.UUIDField(null=True)
    ready = models.BooleanField(default=False)
    ratio = models.FloatField(null=True)
    data = models.JSONField(null=True)
    note = models.TextField(blank=True)
    tags = models.ManyToManyField(Tag, blank=True, related_name="items")
