"""An app of 200 generated models, to time the router with a large routing table."""
