"""Horizontal sharding: one model's rows spread over the databases of a shard group.

``slots`` (where a key lives), ``query`` (the sharded queryset and its merges).
The public names are exported by ``dbfleet``.
"""
