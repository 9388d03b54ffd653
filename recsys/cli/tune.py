"""``recsys tune`` and ``recsys profile ...``: tune the serving profile on the store's data."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup, with_appcontext

from recsys.cli.jobs import recorded, set_result
from recsys.cli.util import echo_json
from recsys.errors import ModelError

log = logging.getLogger(__name__)


def tune_store(
    data,
    repo,
    options,
    activate: bool = True,
    actor: str = "cli",
    echo=None,
    ranker: bool = True,
) -> dict[str, Any]:
    """Tune on ``data``, refit the chosen strategies on all of it, store the profile, and
    activate it when its guard passed (or, with no profile active yet, the best-single
    fallback the guard left in its place). A re-tune that fails its guard leaves the active
    profile serving. Returns a summary dict.

    Parameters
    ----------
    data : InteractionData
        The store's events.
    repo : ModelRepository
        The model store: versions and the profile are saved there.
    options : TuneOptions
        The search options.
    activate : bool
        Activate the profile (subject to its guard); False only stores it.
    actor : str
        Who tuned, recorded with the versions and in the audit.
    echo : Callable[[str], None] or None
        Where progress lines go; None: nowhere.
    ranker : bool
        Also train the learned second stage on the same validation rows
        (``recsys.offline.tuning.ranking``); stored, and activated with the profile, only when
        its guard finds it not worse than the profile's blend out of fold.

    Returns
    -------
    dict[str, Any]
        ``version``, ``activated``, ``previous`` (the profile active before, or None),
        ``note`` (why it was not activated, or None), ``guard``, ``routes``, ``params``,
        ``models`` (strategy -> version), ``validation``, ``ranker`` (its report, with
        ``version`` and ``activated`` when stored; None without ``ranker``) and ``seconds``
        (``search``, ``rank``, ``refit``).
    """
    from recsys.models.profile import activate_profile, guard_note, save_profile
    from recsys.models.repository import PROFILE_KIND
    from recsys.offline.training import train_strategies
    from recsys.offline.tuning.search import Tuner
    from recsys.ops import jobs

    say = echo or (lambda _msg: None)
    t0 = time.perf_counter()
    # The ranker's share of the budget is kept off the search's clock (Tuner.RANKER_SHARE).
    tuner = Tuner(data, dataclasses.replace(options, ranker=ranker))
    with jobs.span(0.0, 0.85):  # a recorded job's progress: the search, then the refit
        profile = tuner.run()
    tune_s = time.perf_counter() - t0
    say(f"searched in {tune_s:.0f}s; guard {profile.guard['verdict']}: {profile.guard['reason']}")
    say(profile.summary())
    learned, report, rank_s = None, None, 0.0
    if ranker:
        t_r = time.perf_counter()
        learned, report = tuner.fit_ranker()
        rank_s = time.perf_counter() - t_r
        oof = report["out_of_fold"]
        say(
            f"ranker: out of fold {oof['ranked']:.4f} vs blend {oof['blend']:.4f} "
            f"({report['verdict']}): " + ("kept" if learned else "the blend stays")
        )
    needed = list(dict.fromkeys([*profile.strategies(), *(learned.generators if learned else [])]))
    params = {**{g: tuner.params[g] for g in needed if g in tuner.params}, **profile.params}
    t1 = time.perf_counter()
    reuse = {s: v for s in needed if (v := _fitted_alike(repo, s, params, data))}
    with jobs.span(0.85, 1.0):
        results = train_strategies(
            data,
            repo,
            [s for s in needed if s not in reuse],
            params=params,
            holdout=0.0,
            activate=False,
            actor=actor,
            progress=options.progress,
        )
    profile.models = {**reuse, **{r.strategy: r.version for r in results}}
    refit_s = time.perf_counter() - t1
    version = save_profile(repo, profile, actor=actor)
    active = repo.active_version(PROFILE_KIND)
    passed = profile.guard.get("verdict") == "passed"
    activated, note = False, None
    if not activate:
        note = "not activated (--no-activate)"
    elif passed or active is None:
        activate_profile(repo, version, actor=actor, reason=f"tuned profile {version}")
        activated = True
        if not passed:
            note = (
                f"guard failed: serving the best single configuration ({profile.guard['reason']})"
            )
    else:
        note = f"guard failed: profile {active} stays active ({profile.guard['reason']})"
    if note and not passed:
        log.warning("recsys tune: %s", note)
    with repo.sessionmaker() as s, s.begin():
        guard_note(s, actor, profile, activated)
    if learned is not None:
        report["version"] = repo.save_version(
            learned, data, {"ndcg_oof": report["out_of_fold"]["ranked"]}, actor=actor
        )
        report["activated"] = activated
        if activated:
            repo.activate(learned.name, report["version"], actor=actor)
    return {
        "version": version,
        "activated": activated,
        "previous": active,
        "note": note,
        "guard": profile.guard,
        "routes": profile.routes,
        "params": profile.params,
        "models": profile.models,
        "validation": profile.validation,
        "ranker": report,
        "seconds": {
            "search": round(tune_s, 1),
            "rank": round(rank_s, 1),
            "refit": round(refit_s, 1),
        },
    }


def _fitted_alike(repo, strategy: str, params: dict, data) -> str | None:
    """The active version of ``strategy`` if it was fitted with these parameters (strategy ->
    kwargs) on these very events (``recsys train --tune`` has just trained it): no need to fit
    it again."""
    from strategies import get_strategy_class

    version = repo.active_version(strategy)
    if version is None:
        return None
    row = repo.get_version(strategy, version)
    try:
        wanted = get_strategy_class(strategy)(**params.get(strategy, {})).get_params()
    except (ValueError, TypeError):
        return None
    stored = row["params"].get("params", row["params"])
    snap, info = row["data_snapshot"], data.info or {}
    same_data = (
        snap.get("events") == len(data)
        and snap.get("ts_max") == info.get("ts_max")
        and snap.get("ts_min") == info.get("ts_min")
    )
    return version if same_data and stored == wanted else None


def tune_options(
    budget: str,
    progress: bool,
    objective: str = "ndcg@10",
    tune_holdout: float = 0.2,
    validation: str = "time",
    max_routes: int = 4,
    strategies: str | None = None,
    trials: int | None = None,
    min_coverage: float | None = None,
    routes_file: str | None = None,
    storage: str | None = None,
    seed: int = 42,
    folds: int | None = None,
):
    """Build ``TuneOptions`` from CLI values, turning bad ones into usage errors.

    Parameters
    ----------
    budget : str
        ``--budget``: seconds, or a number with ``s`` / ``m`` / ``h``.
    progress : bool
        Show a progress bar.
    objective : str
        ``--objective``: ``METRIC@K``.
    tune_holdout : float
        ``--tune-holdout``: validation share, in (0, 1).
    validation : str
        ``--validation``: how the validation slice is cut.
    max_routes : int
        ``--max-routes``: most routes, 1 to 8.
    strategies : str or None
        ``--strategies``: comma-separated names; None: every strategy.
    trials : int or None
        ``--trials``: most trials per study; None: the budget decides.
    min_coverage : float or None
        ``--min-coverage``: catalogue share each route should cover; None: no constraint.
    routes_file : str or None
        ``--routes``: JSON file of routes to evaluate instead of searching; None: search.
    storage : str or None
        ``--storage``: Optuna storage URL; None: studies in memory.
    seed : int
        ``--seed``: random seed.
    folds : int or None
        ``--folds``: validation folds; None: as many as 2000 rows need.

    Returns
    -------
    TuneOptions
        The checked options.

    Raises
    ------
    click.UsageError
        A value out of range, or a routes file that cannot be read or is not valid routes.
    """
    from recsys.config import get_config
    from recsys.offline.training import training_budget_bytes
    from recsys.offline.tuning.options import TuneOptions, parse_budget, parse_strategies

    cfg = get_config(current_app)
    routes = None
    if routes_file:
        try:
            with open(routes_file) as f:
                raw = json.load(f)
        except (OSError, ValueError) as e:
            raise click.UsageError(f"--routes {routes_file}: {e}") from e
        routes = raw.get("routes", raw) if isinstance(raw, dict) else raw
    try:
        opts = TuneOptions(
            objective=objective,
            budget_s=parse_budget(budget),
            max_trials=trials,
            validation=validation,
            fraction=tune_holdout,
            folds=folds,
            seed=seed,
            strategies=parse_strategies(strategies),
            max_routes=max_routes,
            min_coverage=min_coverage,
            routes=routes,
            storage=storage,
            progress=progress,
            memory_budget_bytes=training_budget_bytes(cfg.train_memory_budget_mb),
            fit_time_limit_s=cfg.train_fit_time_limit_s or None,
        ).check()
        if routes is not None:
            from recsys.models.profile import ServingProfile

            ServingProfile(routes=routes).check()
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    return opts


def _tune_flags(fn):
    """The search options shared by ``recsys tune`` and ``recsys train --tune``."""
    from recsys.offline.tuning.options import MAX_FOLDS, VALIDATIONS

    opts = [
        click.option(
            "--objective",
            default="ndcg@10",
            show_default=True,
            help="METRIC@K: ndcg, recall, hit_rate, precision, map or mrr.",
        ),
        click.option(
            "--tune-holdout",
            "tune_holdout",
            type=click.FloatRange(0.01, 0.9),
            default=0.2,
            show_default=True,
            help="Validation share: the newest events (time) or a random share.",
        ),
        click.option(
            "--validation",
            type=click.Choice(VALIDATIONS),
            default="time",
            show_default=True,
            help="How the validation slice is cut (as your test would be).",
        ),
        click.option(
            "--folds",
            type=click.IntRange(1, MAX_FOLDS),
            default=None,
            help="Validation folds, each cut like the first from the older rest "
            "(default: enough for 2000 validation users, summed over the folds).",
        ),
        click.option("--max-routes", type=click.IntRange(1, 8), default=4, show_default=True),
        click.option(
            "--strategies",
            default=None,
            help="Comma-separated strategies to consider (default: all but the opt-in ones, "
            "such as sequence, which are searched only when named).",
        ),
        click.option(
            "--trials", type=click.IntRange(1), default=None, help="Trials per study at most."
        ),
        click.option(
            "--min-coverage",
            type=click.FloatRange(0, 1),
            default=None,
            help="Coverage-constrained objective: catalogue share each route should cover.",
        ),
        click.option(
            "--routes",
            "routes_file",
            type=click.Path(dir_okay=False),
            default=None,
            help="JSON routes to evaluate and guard instead of searching them.",
        ),
        click.option(
            "--storage",
            default=None,
            help="Optuna storage URL (e.g. sqlite:///tune.db) to keep the studies.",
        ),
        click.option("--seed", type=int, default=42, show_default=True),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def echo_outcome(out: dict[str, Any]) -> None:
    """Print the outcome of ``tune_store`` for a person: the version and whether it is active,
    the validation figures against each single strategy, the models and the time taken.

    Parameters
    ----------
    out : dict[str, Any]
        ``tune_store``'s answer.
    """
    state = "active" if out["activated"] else "stored, not active"
    click.echo(f"profile {out['version']}: {state}" + (f" ({out['note']})" if out["note"] else ""))
    v = out["validation"]
    click.echo(
        f"validation ({v['slice']}, {v['users']} users, {v.get('folds', 1)} fold(s)): "
        + ", ".join(f"{k} {val:.4f}" for k, val in v["overall"].items())
        + "; single strategies: "
        + ", ".join(f"{k} {val:.4f}" for k, val in v["baselines"].items())
    )
    click.echo(f"models: {out['models']}")
    rk = out.get("ranker")
    if rk is not None:
        where = f"version {rk['version']}" if rk.get("version") else "not stored"
        click.echo(
            f"ranker ({where}): out of fold {rk['out_of_fold']['ranked']:.4f} vs blend "
            f"{rk['out_of_fold']['blend']:.4f}; {rk['verdict']}"
        )
    sec = out["seconds"]
    click.echo(
        f"time: search {sec['search']}s, ranker {sec.get('rank', 0)}s, refit {sec['refit']}s"
    )


@click.command("tune")
@recorded("tune")
@with_appcontext
@click.option("--budget", default="5m", show_default=True, help="Search time (90s, 5m, 1h).")
@_tune_flags
@click.option("--no-activate", is_flag=True, help="Store the profile without activating it.")
@click.option(
    "--ranker/--no-ranker",
    default=True,
    show_default=True,
    help="Also train the learned ranker on the same validation rows (kept only if not worse "
    "than the blend out of fold; docs/ranking.md).",
)
@click.option("--if-missing", is_flag=True, help="Do nothing when a profile is already active.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@with_appcontext
def tune_command(
    budget: str,
    no_activate: bool,
    ranker: bool,
    if_missing: bool,
    as_json: bool,
    quiet: bool,
    **search: Any,
) -> None:
    """Tune the serving profile on the store's events and activate it if its guard passes.

    Holds out the newest events (--tune-holdout, --validation), searches routes (history
    buckets), per-route strategies and blend weights, the fusion method and every strategy's
    main hyperparameters with Optuna within --budget, refits the chosen strategies on all
    events, stores the profile in the model repository and activates it when it is at least
    as good as the best single strategy and popularity on the validation slice. The learned
    ranker (--ranker, the default) is trained on the same rows and kept with it only when not
    worse than the profile's blend out of fold.
    """
    from recsys.models.repository import PROFILE_KIND, get_repository
    from recsys.store import get_engine
    from recsys.store.training_data import load_interactions

    repo = get_repository(current_app)
    if if_missing and repo.active_version(PROFILE_KIND):
        click.echo(f"profile {repo.active_version(PROFILE_KIND)} is active; skipped")
        return
    opts = tune_options(budget, progress=not quiet and not as_json, **search)
    data = load_interactions(get_engine())
    if len(data) == 0:
        raise click.ClickException("the store has no events; import some first (recsys import)")
    try:
        out = tune_store(
            data,
            repo,
            opts,
            activate=not no_activate,
            echo=None if as_json else click.echo,
            ranker=ranker,
        )
    except (ValueError, ModelError) as e:
        raise click.ClickException(getattr(e, "description", str(e))) from None
    set_result(
        {
            "profile": {k: out[k] for k in ("version", "activated", "previous", "note")},
            "validation": out["validation"].get("overall"),
            "models": out["models"],
        }
    )
    if as_json:
        echo_json(out)
    else:
        echo_outcome(out)


@click.group("profile", cls=AppGroup)
def profile_group() -> None:
    """Serving profiles (what recsys tune chose): show, switch off. Activate and roll back
    with ``recsys models activate profile VERSION`` / ``recsys models rollback profile``."""


@profile_group.command("show")
@click.argument("version", required=False)
@click.option("--json", "as_json", is_flag=True, help="The whole profile as JSON (with trace).")
@with_appcontext
def profile_show(version: str | None, as_json: bool) -> None:
    """The active profile (or VERSION): routes, weights, hyperparameters, validation, guard."""
    from recsys.models.profile import active_profile, load_profile
    from recsys.models.repository import get_repository

    repo = get_repository(current_app)
    try:
        profile = load_profile(repo, version) if version else active_profile(repo)
    except ModelError as e:
        raise click.ClickException(e.description) from None
    if profile is None:
        raise click.ClickException("no serving profile is active (recsys tune makes one)")
    if as_json:
        echo_json(profile.to_dict())
        return
    click.echo(f"profile {profile.version} (created {profile.created_at}, {profile.objective})")
    click.echo(profile.summary())
    click.echo(f"params: {json.dumps(profile.params)}")
    click.echo(f"models: {profile.models}")
    click.echo(f"guard: {profile.guard.get('verdict')}: {profile.guard.get('reason')}")
    for name, r in profile.validation.get("routes", {}).items():
        click.echo(f"  route {name}: {r}")


@profile_group.command("off")
@click.option("--actor", default="cli", show_default=True)
@with_appcontext
def profile_off(actor: str) -> None:
    """Serve without a profile (the shipped cold/warm routing); undo with models activate."""
    from recsys.models.profile import deactivate_profile
    from recsys.models.repository import get_repository

    previous = deactivate_profile(get_repository(current_app), actor=actor)
    click.echo(f"profile {previous} switched off" if previous else "no profile was active")


# Registered on the ``recsys`` group by ``recsys.cli.main``.
COMMANDS = (tune_command, profile_group)
