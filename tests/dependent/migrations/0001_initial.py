"""A migration that reads another database, and says so with a dependency."""

from typing import Any

from django.db import migrations, models


def copy_author_emails(apps: Any, schema_editor: Any) -> None:
    # Reads library.Author where it lives ("default"): that database must be migrated first.
    Author = apps.get_model("library", "Author")
    Subscriber = apps.get_model("dependent", "Subscriber")
    emails = list(Author.objects.exclude(email="").values_list("email", flat=True))
    alias = schema_editor.connection.alias
    Subscriber.objects.using(alias).bulk_create([Subscriber(email=email) for email in emails])


class Migration(migrations.Migration):
    initial = True
    dependencies = [("library", "0002_email_and_title")]

    operations = [
        migrations.CreateModel(
            name="Subscriber",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("email", models.EmailField(max_length=254)),
            ],
        ),
        migrations.RunPython(copy_author_emails, hints={"model": "dependent.Subscriber"}),
    ]
