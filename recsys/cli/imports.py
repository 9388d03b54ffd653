"""``recsys import online-retail|movielens|csv`` and ``recsys stats``."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

import click
from flask.cli import AppGroup, with_appcontext
from sqlalchemy.exc import SQLAlchemyError

from recsys.cli.jobs import recorded, set_result
from recsys.offline.importers.common import ImportBatch, ImportReport, SourceError
from recsys.offline.importers.writing import run_import

try:  # the raw psycopg cursor used for COPY raises psycopg's own errors
    import psycopg

    _DB_ERRORS: tuple[type[BaseException], ...] = (SQLAlchemyError, sqlite3.Error, psycopg.Error)
except ImportError:  # pragma: no cover - psycopg is a dependency
    _DB_ERRORS = (SQLAlchemyError, sqlite3.Error)

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print the import report as JSON instead of text."
)


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "orig", None) or e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _import(parse: Callable[[], tuple[ImportReport, ImportBatch]], as_json: bool) -> None:
    from recsys.ops import jobs
    from recsys.store import get_engine

    jobs.report(0.0, "reading the source", force=True)
    try:
        report, batch = parse()
    except SourceError as e:
        raise click.ClickException(str(e)) from e
    jobs.report(0.4, "writing to the store", force=True)
    try:
        run_import(get_engine(), report, batch)
    except _DB_ERRORS as e:
        raise click.ClickException(
            f"import failed and was rolled back, nothing was imported: {_first_line(e)}"
        ) from e
    set_result(report.to_dict())
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        for line in report.summary():
            click.echo(line)


@click.group("import", cls=AppGroup)
def import_group() -> None:
    """Bulk-import interactions, items and users (idempotent: re-importing adds nothing)."""


@import_group.command("online-retail")
@recorded("import")
@click.argument("path", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--if-empty", is_flag=True, help="Do nothing if the store already has events (for make run)."
)
@json_option
@with_appcontext
def import_online_retail(path: str | None, if_empty: bool, as_json: bool) -> None:
    """Import the UCI Online Retail file (default: the copy bundled in the package).

    Each purchase line (customer present, quantity > 0, not a cancellation) becomes a purchase
    event; every other line is counted under its skip reason.
    """
    from recsys.offline.importers import online_retail
    from recsys.offline.importers.stats import has_events
    from recsys.store import get_engine

    if if_empty:
        with get_engine().connect() as conn:
            if has_events(conn):
                click.echo("the store already has events: skipping the import (--if-empty)")
                set_result({"skipped": "the store already has events (--if-empty)"})
                return
    path = path or online_retail.default_path()
    _import(lambda: online_retail.parse(path), as_json)


@import_group.command("movielens")
@recorded("import")
@click.argument("path", type=click.Path(file_okay=False))
@json_option
@with_appcontext
def import_movielens(path: str, as_json: bool) -> None:
    """Import a MovieLens folder: classic (u.data, u.item) or CSV (ratings.csv, movies.csv)."""
    from recsys.offline.importers import movielens

    _import(lambda: movielens.parse(path), as_json)


@import_group.command("csv")
@recorded("import")
@click.option(
    "--interactions",
    required=True,
    type=click.Path(dir_okay=False),
    help="user_id,item_id[,event][,value][,timestamp]",
)
@click.option(
    "--items",
    type=click.Path(dir_okay=False),
    help="item_id[,title][,description][,categories][,price][,available]",
)
@click.option("--users", type=click.Path(dir_okay=False), help="user_id[,attributes]")
@json_option
@with_appcontext
def import_csv(interactions: str, items: str | None, users: str | None, as_json: bool) -> None:
    """Import generic CSV files with header rows (formats: README, "Importing data")."""
    from recsys.offline.importers import csv_import

    _import(lambda: csv_import.parse(interactions, items, users), as_json)


@click.command("stats")
@with_appcontext
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@with_appcontext
def stats(as_json: bool) -> None:
    """Counts of users, items and events (by type) in the store."""
    from recsys.offline.importers.stats import store_stats
    from recsys.store import get_engine

    try:
        with get_engine().connect() as conn:
            s = store_stats(conn)
    except SQLAlchemyError as e:
        raise click.ClickException(
            f"cannot read the store (did you run `recsys db upgrade`?): {_first_line(e)}"
        ) from e
    if as_json:
        click.echo(json.dumps(s, sort_keys=False))
        return
    click.echo(f"users   {s['users']:>10,}   ({s['users_with_events']:,} with events)")
    click.echo(
        f"items   {s['items']:>10,}   ({s['items_with_events']:,} with events, "
        f"{s['items_available']:,} available)"
    )
    click.echo(f"events  {s['events']:>10,}")
    for typ, n in s["events_by_type"].items():
        if n:
            click.echo(f"  {typ:<8}{n:>10,}")
    if s["time_range"]:
        click.echo(f"time range  {s['time_range'][0]} .. {s['time_range'][1]}")


# Registered on the ``recsys`` group by ``recsys.cli.main``.
COMMANDS = (import_group, stats)
