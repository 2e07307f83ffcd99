"""The test project's own ``library.0001_initial``."""

from importlib import import_module

Migration = import_module("tests.library.migrations.0001_initial").Migration
