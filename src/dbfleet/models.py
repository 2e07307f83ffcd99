from django.db import models


class Decision(models.Model):
    """The outcome of a two-phase transaction, kept on ``DEFAULT_DATABASE`` until it is settled."""

    transaction_id = models.CharField(max_length=64, primary_key=True)
    committed = models.BooleanField()
    created_ms = models.BigIntegerField(
        help_text="When the decision was made, in Unix milliseconds."
    )

    class Meta:
        db_table = "dbfleet_decision"

    def __str__(self) -> str:
        return f"{self.transaction_id}: {'commit' if self.committed else 'roll back'}"
