from django.db import models


class Shelf(models.Model):
    name = models.CharField(max_length=40)
    note = models.CharField(max_length=20, null=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=~models.Q(name=""), name="speedapp_named")]


class ShelfProxy(Shelf):
    class Meta:
        proxy = True


class Article(models.Model):
    title = models.CharField(max_length=120)
    shelf = models.ForeignKey(Shelf, models.CASCADE)
    count = models.IntegerField(default=0)

    class Meta:
        indexes = [models.Index(fields=["title"], name="speedapp_title_idx")]
        unique_together = [("shelf", "title")]


class Legacy(models.Model):
    name = models.CharField(max_length=20)

    class Meta:
        managed = False
        db_table = "speedapp_legacy_table"
