"""Migration packages with wrong hints, swapped in with MIGRATION_MODULES."""
