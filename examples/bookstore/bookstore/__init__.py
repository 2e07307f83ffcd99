"""The bookstore project: one app, two databases."""
