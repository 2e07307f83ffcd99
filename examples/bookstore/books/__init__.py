"""Authors in ``default``, books in ``books``: one app split across two databases."""
