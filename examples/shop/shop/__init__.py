"""Customers and their orders, sharded by customer over four databases."""
