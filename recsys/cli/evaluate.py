"""``recsys evaluate``: compare serving configurations offline, through the service's request path.

Command shape (scripts rely on it)::

    recsys evaluate --data PATH --split SPLIT --seed N --k K --config A --config B [...] --out DIR
"""

from __future__ import annotations

import logging
import os
import time

import click
from flask.cli import AppGroup, with_appcontext

from recsys.offline.evaluation.splits import SPLITS

log = logging.getLogger(__name__)


def _tqdm_factory(enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    def make(total: int, desc: str, unit: str):
        # disable=None: no bar (no carriage returns) when stderr is not a terminal.
        return tqdm(
            total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, disable=None
        )

    return make


def load_dataset(path: str | None):
    """``--data``: the store when omitted, else a folder or file in a format the importers read.

    MovieLens 100K (a folder with ``u.data``) and the Online Retail file (``.csv.gz``/``.csv``,
    or a folder holding ``online_retail.csv.gz``) use the fast readers in
    ``recsys.offline.evaluation.datasets``, which keep file order (the seeded splits depend on it);
    other formats go through the importers' parsers (``recsys.offline.importers``).

    Parameters
    ----------
    path : str or None
        ``--data``: a MovieLens folder (either layout), an Online Retail file or folder, a CSV
        folder or file in the ``recsys import csv`` format; None: the store's events.

    Returns
    -------
    InteractionData
        The events, with ``info["dataset"]`` set.

    Raises
    ------
    click.UsageError
        No such path, a format no reader knows, a file that cannot be read, or no events.
    """
    from recsys.offline.evaluation import datasets

    if path is None:
        from recsys.store import get_engine
        from recsys.store.training_data import load_interactions

        data = load_interactions(get_engine())
        data.info.setdefault("dataset", "store")
        return data
    if not os.path.exists(path):
        raise click.UsageError(f"--data {path}: no such file or folder")
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "u.data")):
        return datasets.load_movielens_100k(path)
    retail = path
    if os.path.isdir(path):
        for name in ("online_retail.csv.gz", "online_retail.csv"):
            if os.path.exists(os.path.join(path, name)):
                retail = os.path.join(path, name)
    if os.path.isfile(retail) and "retail" in os.path.basename(retail).lower():
        return datasets.load_online_retail(retail)
    return _load_with_importers(path)


def _find(folder: str, *names: str) -> str | None:
    for name in names:
        for ext in ("", ".gz"):
            p = os.path.join(folder, name + ext)
            if os.path.isfile(p):
                return p
    return None


def _load_with_importers(path: str):
    """Other formats through the importers' parsers (no store involved): a modern MovieLens
    folder (ratings.csv + movies.csv) or a generic CSV folder (interactions.csv, optional
    items.csv and users.csv, in the ``recsys import csv`` format)."""
    from recsys.offline.importers import csv_import, movielens
    from recsys.offline.importers.common import SourceError

    try:
        if os.path.isdir(path) and _find(path, "ratings.csv") and _find(path, "movies.csv"):
            _report, batch = movielens.parse(path)
        elif os.path.isdir(path) and _find(path, "interactions.csv", "events.csv"):
            _report, batch = csv_import.parse(
                _find(path, "interactions.csv", "events.csv"),
                items=_find(path, "items.csv"),
                users=_find(path, "users.csv"),
            )
        elif os.path.isfile(path) and path.endswith((".csv", ".csv.gz")):
            _report, batch = csv_import.parse(path)
        else:
            raise click.UsageError(
                f"--data {path}: not a format the importers read (MovieLens folder, Online "
                "Retail file, CSV folder with interactions.csv, or a CSV interactions file)"
            )
    except SourceError as e:
        raise click.UsageError(f"--data {path}: {e}") from e
    data = batch_to_data(batch)
    data.info["dataset"] = os.path.basename(os.path.normpath(path))
    return data


def batch_to_data(batch):
    """An importer's ImportBatch as InteractionData, events in source order.

    Parameters
    ----------
    batch : ImportBatch
        An importer's batch (naive datetimes are taken as UTC).

    Returns
    -------
    InteractionData
        The events (Unix-second timestamps), over every item of the batch, with item titles,
        descriptions, categories and availability.

    Raises
    ------
    click.UsageError
        The batch has no events.
    """
    import datetime as dt

    import numpy as np

    from features.interactions import InteractionData, ItemMeta

    if not batch.events:
        raise click.UsageError("the data has no interactions")

    # Importers hand out naive UTC datetimes; .timestamp() on a naive one would assume local time.
    def unix(t):
        return int((t if t.tzinfo else t.replace(tzinfo=dt.UTC)).timestamp())

    users, items, types, values, ts = zip(
        *((e[0], e[1], e[2], e[3], unix(e[4])) for e in batch.events), strict=True
    )
    all_items = list(dict.fromkeys([*batch.items, *items]))
    rows = [batch.items.get(i) for i in all_items]
    meta = ItemMeta(
        titles=[r.title if r else "" for r in rows],
        descriptions=[r.description if r else "" for r in rows],
        categories=[list(r.categories) if r else [] for r in rows],
        available=np.array([r.available if r else True for r in rows], dtype=bool),
        price=np.array(
            [r.price if r and r.price is not None else np.nan for r in rows], dtype=np.float64
        ),
    )
    return InteractionData.from_arrays(
        users, items, list(types), values, ts, all_item_ids=all_items, item_meta=meta
    )


@click.command("evaluate")
@with_appcontext
@click.option(
    "--data",
    "data_path",
    type=click.Path(),
    default=None,
    help="Dataset folder or file (MovieLens, Online Retail, CSV folder); omit for the store.",
)
@click.option("--split", type=click.Choice(SPLITS), default="stratified-item", show_default=True)
@click.option("--seed", type=int, default=42, show_default=True, help="Split and bootstrap seed.")
@click.option("--k", "k", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option(
    "--config",
    "config_specs",
    multiple=True,
    required=True,
    help="A .toml/.json file, a strategy name, or 'default'. Repeat; the first is the baseline.",
)
@click.option("--out", "out_dir", type=click.Path(), required=True, help="Report folder.")
@click.option("--ratio", type=float, default=0.75, show_default=True, help="Train share (random).")
@click.option("--cutoff", default=None, help="Time split: ISO date; test = events at/after it.")
@click.option(
    "--fraction", type=float, default=None, help="Time split: newest share to test (default 0.2)."
)
@click.option("--resamples", type=click.IntRange(100, 100000), default=2000, show_default=True)
@click.option(
    "--baseline-only",
    is_flag=True,
    help="Compare each configuration with the first only (default: every pair).",
)
@click.option(
    "--relevant",
    type=click.Choice(["all", "new"]),
    default="all",
    show_default=True,
    help="Which test events count: all, or only items new to the user (discovery).",
)
@click.option(
    "--tune-budget",
    default="5m",
    show_default=True,
    help="Search time for a 'tuned' configuration (e.g. 90s, 5m).",
)
@click.option(
    "--tune-strategies",
    default=None,
    help="Comma-separated strategies a 'tuned' configuration may use (default: all but the "
    "opt-in ones; name sequence here to let the search weigh it).",
)
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@with_appcontext
def evaluate_command(
    data_path: str | None,
    split: str,
    seed: int,
    k: int,
    config_specs: tuple[str, ...],
    out_dir: str,
    ratio: float,
    cutoff: str | None,
    fraction: float | None,
    resamples: int,
    baseline_only: bool,
    relevant: str,
    tune_budget: str,
    tune_strategies: str | None,
    no_progress: bool,
) -> None:
    """Compare serving configurations offline and write a report folder.

    Each configuration is trained on the training part only and scored through the service's
    own request path (router, blend, business rules). Writes OUT/report.json, OUT/summary.md and
    PNG plots, and prints the metrics and verdicts.
    """
    from recsys.offline.evaluation.configs import ConfigError, load_configs
    from recsys.offline.evaluation.report import write_report
    from recsys.offline.evaluation.runner import evaluate
    from recsys.offline.tuning.options import parse_budget, parse_strategies
    from recsys.offline.tuning.search import tune_config

    if split != "time" and (cutoff or fraction):
        raise click.UsageError("--cutoff/--fraction only apply to --split time")
    try:
        budget_s = parse_budget(tune_budget)
    except ValueError as e:
        raise click.UsageError(f"--tune-budget: {e}") from e
    try:
        strategies = parse_strategies(tune_strategies)
    except ValueError as e:
        raise click.UsageError(f"--tune-strategies: {e}") from e
    try:
        configs = load_configs(list(config_specs))
    except ConfigError as e:
        raise click.UsageError(str(e)) from e
    if strategies and not any(cfg.tune for cfg in configs):
        raise click.UsageError("--tune-strategies applies only with --config tuned")
    t0 = time.perf_counter()
    try:
        data = load_dataset(data_path)
    except (OSError, ValueError) as e:
        raise click.ClickException(f"cannot read --data {data_path}: {e}") from e
    load_s = time.perf_counter() - t0
    click.echo(
        f"data: {data.info.get('dataset', data_path)}: {len(data)} events, "
        f"{data.n_users} users, {data.n_items} items (read in {load_s:.1f}s)"
    )
    try:
        report = evaluate(
            configs,
            data,
            split=split,
            k=k,
            seed=seed,
            ratio=ratio,
            cutoff=cutoff,
            fraction=fraction,
            resamples=resamples,
            all_pairs=not baseline_only,
            relevant=relevant,
            progress=_tqdm_factory(not no_progress),
            tune_budget=budget_s,
            tune_options={"strategies": strategies} if strategies else None,
            tuner=tune_config,
        )
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    report["timings"]["load_s"] = load_s
    report["timings"]["total_with_load_s"] = time.perf_counter() - t0
    paths = write_report(report, out_dir)
    _echo_summary(report)
    click.echo(f"report: {paths['json']}, {paths['summary']}")


def _echo_summary(report: dict) -> None:
    k = report["k"]
    keys = [f"ndcg@{k}", f"precision@{k}", f"recall@{k}", f"map@{k}", f"coverage@{k}"]
    click.echo(f"{'config':<24}" + "".join(f"{key:>14}" for key in keys) + "   ndcg 95% CI")
    for name, c in report["configs"].items():
        iv = c["intervals"].get(keys[0], [float("nan")] * 2)
        row = "".join(f"{c['metrics'].get(key, float('nan')):>14.4f}" for key in keys)
        click.echo(f"{name:<24}{row}   [{iv[0]:.4f}, {iv[1]:.4f}]")
    for c in report["comparisons"]:
        if c["metric"] == report["main_metric"]:
            click.echo(c["verdict"])
    for name, c in report["configs"].items():
        if "profile" in c:
            from recsys.models.profile import ServingProfile

            p = ServingProfile.from_dict(c["profile"])
            click.echo(f"{name}: profile chosen on the training part (guard {p.guard['verdict']}):")
            click.echo(p.summary())
            click.echo(f"  params: {p.params}")
    click.echo(f"total {report['timings']['total_with_load_s']:.1f}s")


# -- online experiments (recsys.serving.experiments) -----------------------------------------------
@click.group("experiments", cls=AppGroup)
def experiments_group() -> None:
    """Online experiments: list them and report per-variant results."""


@experiments_group.command("list")
@with_appcontext
def experiments_list() -> None:
    """Every experiment with its variants and status."""
    from recsys.cli.util import echo_json
    from recsys.serving import experiments
    from recsys.store import session_scope

    with session_scope() as s:
        echo_json([e.to_dict() for e in experiments.list_all(s)])


@experiments_group.command("report")
@click.argument("name")
@click.option(
    "--window-hours",
    type=float,
    default=24.0,
    show_default=True,
    help="Attribution window after an exposure.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(),
    default=None,
    help="Also write report.json and summary.md into this folder.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report instead of Markdown.")
@with_appcontext
def experiments_report(name: str, window_hours: float, out_dir: str | None, as_json: bool) -> None:
    """Per variant: exposures, click-through and conversion with 95% intervals."""
    import json

    from recsys.errors import NotFound
    from recsys.serving import experiments_report
    from recsys.store import session_scope

    if window_hours <= 0:
        raise click.UsageError("--window-hours must be > 0")
    try:
        with session_scope() as s:
            rep = experiments_report.report(s, name, window_s=window_hours * 3600)
    except NotFound as e:
        raise click.ClickException(e.description) from e
    md = experiments_report.report_markdown(rep)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "report.json"), "w") as f:
            json.dump(rep, f, indent=2, default=str)
        with open(os.path.join(out_dir, "summary.md"), "w") as f:
            f.write(md)
    click.echo(json.dumps(rep, indent=2, default=str) if as_json else md)


# Registered on the ``recsys`` group by ``recsys.cli.main``.
COMMANDS = (evaluate_command, experiments_group)
