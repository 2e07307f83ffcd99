from django.db import models


class Author(models.Model):
    """Lives in ``default``: no route names it."""

    first_name = models.CharField(max_length=100)
    last_name = models.CharField(max_length=100)
    email = models.EmailField(blank=True, default="")

    def __str__(self) -> str:
        return f"{self.first_name} {self.last_name}"


class Book(models.Model):
    """Lives in ``books``: ``DBFLEET["ROUTES"]["books.Book"]``."""

    content = models.TextField()
    title = models.CharField(max_length=200, blank=True, default="")

    def __str__(self) -> str:
        return self.content
