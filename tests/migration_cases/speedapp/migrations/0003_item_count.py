from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("speedapp", "0002_item_code")]

    operations = [
        migrations.AddField(model_name="item", name="count", field=models.IntegerField(default=0)),
    ]
