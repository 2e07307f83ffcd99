"""Adds a column, then runs SQL that fails until ``library_scale`` exists on ``books``.

On MariaDB/MySQL each DDL statement commits at once, so the failure leaves the
column there and the migration unrecorded: a migration that stopped half-way.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("library", "0002_email_and_title")]

    operations = [
        migrations.AddField("book", "weight", models.IntegerField(default=0)),
        migrations.RunSQL(
            "INSERT INTO library_scale (grams) VALUES (1)", hints={"model": "library.Book"}
        ),
    ]
