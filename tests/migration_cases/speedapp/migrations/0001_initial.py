from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = []

    operations = [
        migrations.CreateModel(
            name="Shelf",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False)),
                ("label", models.CharField(max_length=40)),
            ],
        ),
        migrations.CreateModel(
            name="Item",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False)),
                ("title", models.CharField(max_length=40)),
                ("shelf", models.ForeignKey(on_delete=models.CASCADE, to="speedapp.shelf")),
            ],
        ),
        migrations.CreateModel(
            name="ShelfProxy",
            fields=[],
            options={"proxy": True, "indexes": [], "constraints": []},
            bases=("speedapp.shelf",),
        ),
        migrations.CreateModel(
            name="Legacy",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False)),
                ("name", models.CharField(max_length=20)),
            ],
            options={"managed": False, "db_table": "speedapp_legacy_table"},
        ),
    ]
