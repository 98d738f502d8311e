"""Subcommands of the ``latte-ref`` command line (see :mod:`latte_ref.cli`)."""
