"""The ``recsys`` command (``recsys.cli.main``) and its subcommands, one module per group."""
