"""Synced models and their sources (the analytics configuration: tests/test_analytics_sync.py)."""

#: Where the app's models live: the sources in PostgreSQL and SQLite, the copies in ClickHouse.
ROUTES = {
    "synced": "warehouse",
    "synced.Customer": "default",
    "synced.Order": "default",
    "synced.Ticket": "books",
}
