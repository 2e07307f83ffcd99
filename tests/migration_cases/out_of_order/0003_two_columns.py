"""Adds two columns to ``Book``: a test adds only the second by hand, out of order."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("library", "0002_email_and_title")]

    operations = [
        migrations.AddField("book", "width", models.IntegerField(default=0)),
        migrations.AddField("book", "depth", models.IntegerField(default=0)),
    ]
