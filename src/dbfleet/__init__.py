"""Run one Django project on many databases."""

from dbfleet.routing import Router, database_for

__all__ = ["Router", "database_for"]
