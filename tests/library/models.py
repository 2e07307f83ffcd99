from django.db import models


class Author(models.Model):
    first_name = models.CharField(max_length=100)
    last_name = models.CharField(max_length=100)
    email = models.EmailField(blank=True, default="")


class Book(models.Model):
    content = models.TextField()
    title = models.CharField(max_length=200, blank=True, default="")


class BookProxy(Book):
    class Meta:
        proxy = True


class Review(models.Model):
    book = models.ForeignKey(Book, models.CASCADE, related_name="reviews")
    stars = models.PositiveSmallIntegerField()
