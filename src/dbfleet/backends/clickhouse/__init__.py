"""``ENGINE = "dbfleet.backends.clickhouse"``: a ClickHouse server (django-clickhouse-backend)."""
