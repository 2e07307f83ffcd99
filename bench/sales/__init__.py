"""The analytics benchmark's app: sales in PostgreSQL, their copy in embedded ClickHouse."""
