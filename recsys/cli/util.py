"""Helpers the CLI command modules share (below ``recsys.cli.main``, which registers them)."""

from __future__ import annotations

import json

import click


def echo_json(obj: object) -> None:
    """Print ``obj`` as indented JSON, keys sorted (values JSON cannot hold printed as text).

    Parameters
    ----------
    obj : object
        What to print.
    """
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))
