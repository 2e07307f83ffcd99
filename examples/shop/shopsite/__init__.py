"""The shop project: customers and their orders sharded over four SQLite files."""
