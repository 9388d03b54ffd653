"""``recsys synth``: write a synthetic shop's CSV files (``recsys.offline.synth``)."""

from __future__ import annotations

import json
import os

import click

from recsys.offline.importers.common import progress
from recsys.offline.synth import SIZES, SynthParams, generate, sizes


@click.command("synth")
@click.option(
    "--size",
    type=click.Choice(list(SIZES), case_sensitive=False),
    default="S",
    show_default=True,
    help="Items/shoppers/events: S 5k/20k/200k, M 50k/200k/2M, L 100k/1M/10M, XL 1M/10M/100M.",
)
@click.option("--items", type=click.IntRange(min=1), help="Items (overrides the size's).")
@click.option("--users", type=click.IntRange(min=1), help="Shoppers (overrides the size's).")
@click.option("--events", type=click.IntRange(min=1), help="Events (overrides the size's).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="synth",
    show_default=True,
    help="Folder for items.csv and interactions.csv.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
def synth(
    size: str,
    items: int | None,
    users: int | None,
    events: int | None,
    seed: int,
    out_dir: str,
    as_json: bool,
) -> None:
    """Write a synthetic shop (items.csv, interactions.csv) for `recsys import csv`.

    Power-law popularity, categories, launches through the year, skewed shopper activity,
    sessions, view > click > cart > purchase and repeat purchases (docs/synth.md). Seeded:
    the same arguments write the same files.
    """
    n_items, n_users, n_events = sizes(size, items, users, events)
    params = SynthParams(items=n_items, users=n_users, events=n_events, seed=seed)
    try:
        params.check()
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    with progress(total=n_events, desc="synth", unit=" events") as bar:
        counts = generate(out_dir, params, progress=bar.update)
    if as_json:
        click.echo(json.dumps(counts, sort_keys=False))
        return
    click.echo(
        f"wrote {counts['items']:,} items, {counts['users']:,} shoppers, {counts['events']:,} "
        f"events to {os.path.join(out_dir, 'items.csv')} and "
        f"{os.path.join(out_dir, 'interactions.csv')}"
    )
    click.echo(
        "  "
        + ", ".join(f"{t} {counts['events_' + t]:,}" for t in ("view", "click", "cart", "purchase"))
    )
    click.echo(
        f"import: recsys import csv --interactions {os.path.join(out_dir, 'interactions.csv')} "
        f"--items {os.path.join(out_dir, 'items.csv')}"
    )


# Registered on the ``recsys`` group by ``recsys.cli.main``.
COMMANDS = (synth,)
