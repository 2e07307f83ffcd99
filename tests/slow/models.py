from django.db import models


class Nap(models.Model):
    name = models.CharField(max_length=20)
    size = models.IntegerField(default=0)
