"""A migration that adds a column on ``books``: pending wherever it is not applied yet."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("library", "0002_email_and_title")]

    operations = [migrations.AddField("book", "note", models.TextField(default=""))]
