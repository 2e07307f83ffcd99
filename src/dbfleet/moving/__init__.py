"""Moving rows between databases: ``fleet copy`` (``copy``) and ``fleet verify`` (``verify``)."""
