from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("speedapp", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="item", name="code", field=models.CharField(default="", max_length=10)
        ),
    ]
