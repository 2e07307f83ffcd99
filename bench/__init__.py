"""dbfleet's benchmarks: ``python3 dev.py bench`` runs them all (see README.md)."""
