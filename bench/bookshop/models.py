from __future__ import annotations

from django.db import models


class Book(models.Model):
    title = models.CharField(max_length=200)
    author = models.CharField(max_length=100)
    isbn = models.CharField(max_length=13)
    year = models.IntegerField()

    # The same manager Django would add; declared because mypy's django-stubs
    # plugin reads tests.settings, where this app is not installed.
    objects: models.Manager[Book] = models.Manager()
