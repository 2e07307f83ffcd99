"""The subcommands of ``manage.py fleet``, one module each: their arguments and their output.

Each module has ``NAME``, ``HELP``, ``DESCRIPTION``, ``add_arguments(parser)`` and
``handle(out, **options)``. The work is done by functions outside ``management``
that return complete reports (dataclasses); a subcommand only parses, calls, and
renders the report as text or, with ``--format json``, as the same object in JSON.
"""
