"""The test project's own ``library.0002_email_and_title``."""

from importlib import import_module

Migration = import_module("tests.library.migrations.0002_email_and_title").Migration
