"""Money held in two databases: accounts in ``default``, vaults in ``books``."""

from django.db import models


class Account(models.Model):
    name = models.CharField(max_length=50, unique=True)
    balance = models.IntegerField(default=0)


class Vault(models.Model):
    name = models.CharField(max_length=50, unique=True)
    balance = models.IntegerField(default=0)
