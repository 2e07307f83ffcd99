"""Migrations over every database: plan, lint, parallel runner and status.

(Not ``dbfleet.migrations``: Django reserves that name in an installed app for
the app's own migration files.)
"""
