"""A migration that fails on whichever database the app is routed to."""

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    operations = [
        migrations.CreateModel(
            name="Gadget",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("name", models.CharField(max_length=20)),
            ],
        ),
        migrations.RunSQL("INSERT INTO no_such_table VALUES (1)", hints={"model": "broken.Gadget"}),
    ]
