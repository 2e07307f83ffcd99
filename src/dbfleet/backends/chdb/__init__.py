"""``ENGINE = "dbfleet.backends.chdb"``: ClickHouse in this process, through chDB."""
