"""The bookstore's ``Book``, routed to the ``books`` database by the routing benchmark."""
