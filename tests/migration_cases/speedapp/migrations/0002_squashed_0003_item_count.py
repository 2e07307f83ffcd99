from django.db import migrations, models


class Migration(migrations.Migration):
    replaces = [("speedapp", "0002_item_code"), ("speedapp", "0003_item_count")]

    dependencies = [("speedapp", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="item", name="code", field=models.CharField(default="", max_length=10)
        ),
        migrations.AddField(model_name="item", name="count", field=models.IntegerField(default=0)),
    ]
