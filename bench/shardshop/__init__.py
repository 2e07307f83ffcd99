"""A shop sharded by customer over eight PostgreSQL databases, for the sharding benchmark."""
