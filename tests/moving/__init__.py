"""Models ``fleet copy`` and ``fleet verify`` are tested on: every kind of value, a
self-reference, a foreign key and a many-to-many table."""
