from __future__ import annotations

from typing import Any

from django.db import models


class Member(models.Model):
    name = models.CharField(max_length=100)
    favourite_shelves: models.ManyToManyField[Shelf, Favourite] = models.ManyToManyField(
        "Shelf", through="Favourite", related_name="fans"
    )


class Shelf(models.Model):
    label = models.CharField(max_length=20)


class Loan(models.Model):
    member = models.ForeignKey(Member, models.CASCADE, db_constraint=False)
    book_id = models.BigIntegerField(db_index=True)
    books_read: models.ManyToManyField[Shelf, Any] = models.ManyToManyField(Shelf, blank=True)


class Favourite(models.Model):
    member = models.ForeignKey(Member, models.CASCADE)
    shelf = models.ForeignKey(Shelf, models.CASCADE)
