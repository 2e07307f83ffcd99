"""ClickHouse models, routed to the ``warehouse`` alias (the analytics configuration only)."""

from __future__ import annotations

from clickhouse_backend import models


class PageView(models.ClickhouseModel):  # type: ignore[misc]
    """One page view: the columns an analytical query groups, filters and sums."""

    day = models.DateField()
    path = models.StringField()
    visitor = models.UUIDField()
    tags = models.ArrayField(models.StringField())
    seconds = models.Float64Field()
    at = models.DateTime64Field(precision=6)

    class Meta:
        engine = models.MergeTree(order_by=("day", "id"))

    def __str__(self) -> str:
        return f"{self.day} {self.path}"
