"""``recsys train`` and ``recsys models ...``: train versions and manage the repository."""

from __future__ import annotations

import inspect
import json
import time
from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup, with_appcontext

from recsys.cli.jobs import recorded, set_result
from recsys.cli.util import echo_json
from recsys.config import get_config
from recsys.errors import ModelError


def _repo():
    from recsys.models.repository import get_repository

    return get_repository(current_app)


def _fmt_metrics(metrics: dict[str, Any]) -> str:
    keys = ("ndcg@10", "recall@10", "precision@10", "map@10")
    parts = [f"{k}={metrics[k]:.4f}" for k in keys if isinstance(metrics.get(k), int | float)]
    if "eval_users" in metrics:
        parts.append(f"users={metrics['eval_users']}")
    return " ".join(parts) if parts else "(no holdout metrics)"


def _parse_params(values: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for raw in values:
        key, sep, value = raw.partition("=")
        strategy, dot, param = key.partition(".")
        if not sep or not dot or not strategy or not param:
            raise click.UsageError(f"--param expects STRATEGY.NAME=VALUE, got {raw!r}")
        try:
            parsed: Any = json.loads(value)
        except ValueError:
            parsed = value
        out.setdefault(strategy, {})[param] = parsed
    return out


@click.command("train")
@recorded("train")
@with_appcontext
@click.argument("strategies", nargs=-1)
@click.option("--if-missing", is_flag=True, help="Only train strategies with no active version.")
@click.option("--no-activate", is_flag=True, help="Save new versions without activating them.")
@click.option(
    "--gate",
    is_flag=True,
    help="Activate a new version only if its holdout ndcg@10 is not worse than the active one's.",
)
@click.option(
    "--holdout",
    type=click.FloatRange(0.0, 0.9),
    default=0.1,
    show_default=True,
    help="Share of the newest events held out for metrics (0: no evaluation).",
)
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="STRATEGY.NAME=VALUE",
    help="Override a hyperparameter (VALUE parsed as JSON), e.g. --param als.factors=128.",
)
@click.option(
    "--tune",
    is_flag=True,
    help="Then tune the serving profile (recsys tune) and activate it if its guard passes; "
    "with --if-missing only when no profile is active.",
)
@click.option("--tune-budget", default="5m", show_default=True, help="Search time for --tune.")
@click.option(
    "--engine",
    type=click.Choice(["inprocess", "spark"]),
    default="inprocess",
    show_default=True,
    help="spark: fit ALS (or aggregate popularity) on Apache Spark from the events table over "
    "JDBC (PostgreSQL store; needs the spark extra and Java); saved as an ordinary version.",
)
@click.option(
    "--master",
    default=None,
    metavar="URL",
    help="Spark master for --engine spark: local[N] or spark://host:7077 "
    "(default RECSYS_SPARK_MASTER or local[2]).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@with_appcontext
def train(
    strategies: tuple[str, ...],
    if_missing: bool,
    no_activate: bool,
    gate: bool,
    holdout: float,
    params: tuple[str, ...],
    tune: bool,
    tune_budget: str,
    engine: str,
    master: str | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Train STRATEGIES (default: every available one but the opt-in `sequence` and `itemknn`)
    from the store and save new versions.

    Each strategy is fitted on the oldest events and scored on the newest (--holdout), then
    fitted on all events; the version is saved with those holdout metrics and activated unless
    --no-activate (or --gate refuses it). --tune then searches the serving profile.
    A strategy whose estimated peak memory exceeds RECSYS_TRAIN_MEMORY_BUDGET_MB (default 50%
    of the machine's memory), or whose estimated fit exceeds RECSYS_TRAIN_FIT_TIME_LIMIT_S
    (default 600 s), is left out with one line on stderr; the others train.
    --engine spark fits ALS (or aggregates popularity) on Spark: `recsys train als --engine spark`.
    `recsys train ranker` tunes the profile and trains the learned ranker on its validation
    rows (as --tune does; docs/ranking.md).
    """
    from recsys.core.ranker import RANKER_KIND
    from recsys.models.repository import PROFILE_KIND
    from recsys.offline.training import (
        GATE_METRIC,
        model_dir_error,
        train_strategies,
        training_budget_bytes,
    )
    from recsys.ops import jobs
    from recsys.store import get_engine
    from recsys.store.training_data import load_interactions
    from strategies import available_strategies, opt_in

    repo = _repo()
    overrides = _parse_params(params)
    # `recsys train ranker`: the learned second stage is trained by the search (it needs the
    # profile's validation rows), so it means --tune with the ranker.
    want_ranker = RANKER_KIND in strategies
    strategies = tuple(s for s in strategies if s != RANKER_KIND)
    tune = tune or want_ranker
    if master and engine != "spark":
        raise click.UsageError("--master applies to --engine spark only")
    if engine == "spark":
        from recsys.offline.training_spark import SPARK_STRATEGIES

        if tune:
            raise click.UsageError("--tune needs the in-process engine (it replays requests)")
        unsupported = [n for n in strategies if n not in SPARK_STRATEGIES]
        if not strategies or unsupported:
            raise click.UsageError(
                f"--engine spark trains {', '.join(SPARK_STRATEGIES)} only"
                + (f", not {', '.join(unsupported)}" if unsupported else "; name it")
                + " (the others stay single-machine, docs/scale.md)"
            )
    names = list(dict.fromkeys(strategies)) or (
        [] if want_ranker else [n for n in available_strategies() if not opt_in(n)]
    )
    for name in names:
        try:
            repo.resolver(name)
        except (KeyError, ValueError) as e:
            raise click.UsageError(str(e).strip("'\"")) from None
    for name, kwargs in overrides.items():
        if name not in names:
            raise click.UsageError(f"--param for {name!r}, which is not being trained")
        accepted = inspect.signature(repo.resolver(name)).parameters
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise click.UsageError(
                f"{name} has no parameter(s) {', '.join(unknown)}; it takes: "
                + ", ".join(p for p in accepted if p != "self")
            )
    from strategies._ann import DEFAULT_MIN_ITEMS

    ann_min_items = get_config(current_app).ann_min_items
    for name in names:  # ANN_MIN_ITEMS, unless --param names a value; the default stays None
        # (so a version's params equal the class defaults and `recsys tune` can reuse it)
        accepts = "ann_min_items" in inspect.signature(repo.resolver(name)).parameters
        if accepts and ann_min_items != DEFAULT_MIN_ITEMS:
            overrides.setdefault(name, {}).setdefault("ann_min_items", ann_min_items)
    tune_opts = None
    if tune:
        from recsys.cli.tune import tune_options

        tune_opts = tune_options(tune_budget, progress=not quiet and not as_json)
        if if_missing and repo.active_version(PROFILE_KIND):
            tune_opts = None
    if if_missing:
        active = repo.active_versions()
        for name in [n for n in names if n in active]:
            if not as_json:
                click.echo(f"{name}: active version {active[name]} exists, skipped")
        names = [n for n in names if n not in active]
    if not names and tune_opts is None:
        set_result({"skipped": "nothing to train (--if-missing)"} if if_missing else {})
        if as_json:
            echo_json([])
        elif not if_missing:
            raise click.UsageError("no strategy to train")
        return
    if engine == "spark":
        _train_on_spark(names, overrides, holdout, no_activate, gate, master, as_json, repo)
        return
    t0 = time.perf_counter()
    data = load_interactions(get_engine())
    load_s = time.perf_counter() - t0
    if len(data) == 0:
        raise click.ClickException(
            "the store has no events to train on; import some first (recsys import ...)"
        )
    if not as_json:
        info = data.info
        click.echo(
            f"loaded {info['events']} events, {info['users']} users, {info['items']} items "
            f"({info['ts_min']} .. {info['ts_max']}) in {load_s:.1f}s"
        )

    def report(r) -> None:
        if not as_json:
            _echo_result(r)

    refused: list[str] = []

    def refuse(name: str, message: str) -> None:
        refused.append(name)
        click.echo(message, err=True)

    try:
        with jobs.span(0.0, 0.5 if tune_opts is not None else 1.0):
            results = train_strategies(
                data,
                repo,
                names,
                params=overrides,
                holdout=holdout,
                activate=not no_activate,
                gate_metric=GATE_METRIC if gate else None,
                progress=not quiet and not as_json,
                on_result=report,
                memory_budget_bytes=training_budget_bytes(
                    get_config(current_app).train_memory_budget_mb
                ),
                on_refused=refuse,
                fit_time_limit_s=get_config(current_app).train_fit_time_limit_s or None,
            )
        set_result(_job_result(results, None, refused))
        if refused and not results:
            raise click.ClickException(
                "no strategy fits the training budget (TRAIN_MEMORY_BUDGET_MB, "
                "TRAIN_FIT_TIME_LIMIT_S); nothing trained"
            )
        tuned = None
        if tune_opts is not None:
            from recsys.cli.tune import echo_outcome, tune_store

            if not as_json:
                click.echo(f"tuning the serving profile ({tune_budget} budget)")
            with jobs.span(0.5, 1.0):
                tuned = tune_store(
                    data,
                    repo,
                    tune_opts,
                    activate=not no_activate,
                    echo=None if as_json else click.echo,
                )
            set_result(_job_result(results, tuned, refused))
            if not as_json:
                echo_outcome(tuned)
        retention = get_config(current_app).model_keep_versions
        if retention and results:
            from recsys.models.retention import prune

            for r in results:  # MODEL_KEEP_VERSIONS: the retention setting
                for v in prune(repo, int(retention), r.strategy, actor="train"):
                    if not as_json:
                        click.echo(f"pruned {v['strategy']}/{v['version']} (retention)")
    except (ModelError, ValueError) as e:
        raise click.ClickException(getattr(e, "description", str(e))) from None
    except OSError as e:  # the serving profile's files (tune), retention: one line too
        raise click.ClickException(model_dir_error(get_config(current_app).model_dir, e)) from None
    if as_json:
        out = [r.to_dict() for r in results]
        echo_json({"models": out, "profile": tuned} if tune else out)


def _job_result(results, tuned, refused) -> dict[str, Any]:
    """What a training run made, for its job row (``recsys.ops.jobs``)."""
    out: dict[str, Any] = {
        "models": [
            {
                "strategy": r.strategy,
                "version": r.version,
                "activated": r.activated,
                "note": r.note,
                "metrics": {k: v for k, v in r.metrics.items() if isinstance(v, int | float)},
            }
            for r in results
        ],
        "refused": list(refused),
    }
    if tuned is not None:
        out["profile"] = {k: tuned.get(k) for k in ("version", "activated", "note")}
    return out


def _echo_result(r) -> None:
    click.echo(
        f"{r.strategy}: version {r.version} -> {r.path}\n"
        f"  holdout: {_fmt_metrics(r.metrics)}\n"
        f"  fit {r.fit_seconds:.1f}s (holdout fit + eval {r.holdout_seconds:.1f}s)"
    )
    if r.activated:
        click.echo(f"  active (was {r.previous or 'none'})")
    elif r.note:
        click.echo(f"  not activated: {r.note}")
    else:
        click.echo("  not activated (--no-activate)")


def _train_on_spark(names, overrides, holdout, no_activate, gate, master, as_json, repo) -> None:
    """``recsys train als --engine spark``: recsys.offline.training_spark, reported as ``train``."""
    from features.spark import SparkUnavailable
    from recsys.offline.training import GATE_METRIC
    from recsys.offline.training_spark import train_spark

    url = str(get_config(current_app).database_url or "")
    t0 = time.perf_counter()
    try:
        results = train_spark(
            url,
            repo,
            names,
            params=overrides,
            holdout=holdout,
            activate=not no_activate,
            gate_metric=GATE_METRIC if gate else None,
            master=master,
            on_result=None if as_json else _echo_result,
        )
    except SparkUnavailable as e:
        raise click.ClickException(str(e)) from None
    except (ModelError, ValueError) as e:
        raise click.ClickException(getattr(e, "description", str(e))) from None
    if as_json:
        echo_json([{**r.to_dict(), "timings": r.timings} for r in results])
    else:
        read_s = results[0].timings.get("read", 0.0) if results else 0.0
        click.echo(
            f"spark: total {time.perf_counter() - t0:.1f}s (JDBC read + snapshot {read_s:.1f}s)"
        )


@click.group("models", cls=AppGroup)
def models_group() -> None:
    """Model versions: list, activate, roll back, verify, prune."""


def _models_overview(repo, strategy: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for v in repo.list_versions(strategy):
        entry = out.setdefault(v["strategy"], {"active": None, "versions": []})
        if v["active"]:
            entry["active"] = v["version"]
        entry["versions"].append(
            {k: v[k] for k in ("version", "active", "created_at", "metrics", "path")}
        )
    return out


@models_group.command("list")
@click.argument("strategy", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_appcontext
def models_list(strategy: str | None, as_json: bool) -> None:
    """Every strategy's versions (oldest first), the active one marked with '*'."""
    overview = _models_overview(_repo(), strategy)
    if as_json:
        echo_json(overview)
        return
    if not overview:
        click.echo("no model versions" + (f" for {strategy}" if strategy else ""))
        return
    for name, entry in overview.items():
        click.echo(f"{name} (active: {entry['active'] or 'none'})")
        for v in entry["versions"]:
            mark = "*" if v["active"] else " "
            created = (v["created_at"] or "")[:19]
            click.echo(f"  {mark} {v['version']:<22} {created:<19}  {_fmt_metrics(v['metrics'])}")


@models_group.command("activate")
@click.argument("strategy")
@click.argument("version")
@click.option("--gate", is_flag=True, help="Refuse if its holdout ndcg@10 is worse than active.")
@click.option("--actor", default="cli", show_default=True, help="Recorded in the audit log.")
@with_appcontext
def models_activate(strategy: str, version: str, gate: bool, actor: str) -> None:
    """Make VERSION the active version of STRATEGY (checksums verified first)."""
    from recsys.models.profile import activate_profile
    from recsys.models.repository import PROFILE_KIND
    from recsys.offline.training import GATE_METRIC

    try:
        if strategy == PROFILE_KIND:  # a serving profile: its models, then the profile
            previous = activate_profile(_repo(), version, actor=actor)
        else:
            previous = _repo().activate(
                strategy, version, actor=actor, gate_metric=GATE_METRIC if gate else None
            )
    except ModelError as e:
        raise click.ClickException(e.description) from None
    if previous == version:
        click.echo(f"{strategy}: {version} is already active")
    else:
        click.echo(f"{strategy}: {previous or 'none'} -> {version}")


@models_group.command("rollback")
@click.argument("strategy")
@click.option("--actor", default="cli", show_default=True, help="Recorded in the audit log.")
@with_appcontext
def models_rollback(strategy: str, actor: str) -> None:
    """Re-activate the version that was active before the current one."""
    from recsys.models.profile import rollback_profile
    from recsys.models.repository import PROFILE_KIND

    repo = _repo()
    try:
        current = repo.active_version(strategy)
        if strategy == PROFILE_KIND:
            version = rollback_profile(repo, actor=actor)
        else:
            version = repo.rollback(strategy, actor=actor)
    except ModelError as e:
        raise click.ClickException(e.description) from None
    click.echo(f"{strategy}: rolled back {current} -> {version}")


@models_group.command("verify")
@click.argument("strategy", required=False)
@click.argument("version", required=False)
@with_appcontext
def models_verify(strategy: str | None, version: str | None) -> None:
    """Check the checksums of every version (or of STRATEGY's, or of one VERSION)."""
    repo = _repo()
    try:
        if version is not None:
            targets = [(strategy, version)]
            repo.get_version(strategy, version)
        else:
            targets = [(v["strategy"], v["version"]) for v in repo.list_versions(strategy)]
    except ModelError as e:
        raise click.ClickException(e.description) from None
    if not targets:
        raise click.ClickException(
            "no model versions" + (f" for strategy {strategy!r}" if strategy else "")
        )
    failed = 0
    for s, v in targets:
        try:
            manifest = repo.verify_version(s, v)
        except ModelError as e:
            failed += 1
            click.echo(f"FAILED {s}/{v}: {e.description}")
        else:
            click.echo(f"ok     {s}/{v} ({len(manifest['files'])} files)")
    if failed:
        raise click.ClickException(f"{failed} of {len(targets)} version(s) failed verification")


@models_group.command("prune")
@click.argument("strategy", required=False)
@click.option(
    "--keep",
    type=click.IntRange(1),
    default=None,
    help="Versions to keep per strategy, newest first (default: MODEL_KEEP_VERSIONS).",
)
@click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")
@click.option("--actor", default="cli", show_default=True, help="Recorded in the audit log.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_appcontext
def models_prune(
    strategy: str | None, keep: int | None, dry_run: bool, actor: str, as_json: bool
) -> None:
    """Delete old versions (files and SQL rows), keeping the KEEP newest of each strategy.

    The active version, the rollback target and the models of the active serving profile (and
    of its rollback target) are never deleted, whatever KEEP says."""
    from recsys.models.retention import prune

    keep = keep or get_config(current_app).model_keep_versions
    if not keep:
        raise click.UsageError("give --keep N (or set RECSYS_MODEL_KEEP_VERSIONS)")
    try:
        victims = prune(_repo(), int(keep), strategy, dry_run=dry_run, actor=actor)
    except (ModelError, ValueError) as e:
        raise click.ClickException(getattr(e, "description", str(e))) from None
    if as_json:
        keys = ("strategy", "version", "created_at", "bytes")
        echo_json({"dry_run": dry_run, "pruned": [{k: v[k] for k in keys} for v in victims]})
        return
    verb = "would delete" if dry_run else "deleted"
    for v in victims:
        click.echo(f"{verb} {v['strategy']}/{v['version']} ({v['bytes'] / 2**20:.1f} MiB)")
    total = sum(v["bytes"] for v in victims) / 2**20
    click.echo(f"{verb} {len(victims)} version(s), {total:.1f} MiB")


# Registered on the ``recsys`` group by ``recsys.cli.main``.
COMMANDS = (train, models_group)
