"""What ``recsys tune`` searches and for how long: ``TuneOptions``, the parsers of the CLI's
budget and strategy lists, and the ``Clock`` that keeps the budget while a run goes."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

OBJECTIVE_METRICS = ("ndcg", "recall", "hit_rate", "precision", "map", "mrr")
VALIDATIONS = ("time", "leave-last-out", "random-user", "stratified-item")
MAX_FOLDS = 3


@dataclass
class TuneOptions:
    """What ``tune`` searches and how long (see ``recsys.offline.tuning.search``)."""

    objective: str = "ndcg@10"
    budget_s: float = 300.0
    # Trials per study at most (None: the budget decides, up to a per-study ceiling).
    max_trials: int | None = None
    validation: str = "time"
    fraction: float = 0.2  # validation share (time: newest events; random: share of events)
    # Validation folds: the slice is cut again from the rest, older (see ``validation_folds``).
    # None: as many as it takes to reach ``min_rows`` validation rows (at most 3).
    folds: int | None = None
    min_rows: int = 2000
    # Validation users scored at most, summed over the folds (a seeded sample of each fold's
    # users past it): a large shop's time slice holds hundreds of thousands (docs/scale.md).
    max_rows: int = 5000
    # ``recsys train``'s budget (``TRAIN_MEMORY_BUDGET_MB``, ``TRAIN_FIT_TIME_LIMIT_S``): a
    # strategy over it is not searched; None: no limit.
    memory_budget_bytes: float | None = None
    fit_time_limit_s: float | None = None
    seed: int = 42
    strategies: Sequence[str] | None = None  # None: every strategy that imports and fits
    max_routes: int = 4
    n_bins: int = 6
    min_bin_users: int = 25
    # Coverage-constrained objective: each route's lists should cover at least this share
    # of the catalogue; shortfall is subtracted from the objective.
    min_coverage: float | None = None
    tune_params: bool = True  # False: class defaults, only routes and weights are searched
    # Routes given instead of searched (``recsys tune --routes``): only evaluated and guarded.
    routes: list[dict[str, Any]] | None = None
    storage: str | None = None  # an Optuna storage URL to keep the studies for inspection
    # Level of the paired test a departure from a default must pass (a tuned hyperparameter
    # over the shipped one, a route's own strategy or blend over the overall best strategy).
    alpha: float = 0.1
    # The learned ranker's repeat items (recsys.offline.tuning.ranking): None decides from the
    # validation targets, True / False force them on or off.
    ranker_repeats: bool | None = None
    progress: bool = False
    # The learned ranker is trained after the search (``recsys tune --ranker``): its share of
    # the budget (``Tuner.RANKER_SHARE``) is kept off the search's clock.
    ranker: bool = False

    def metric(self) -> tuple[str, int]:
        """The objective, parsed.

        Returns
        -------
        tuple[str, int]
            ``(metric, k)``, e.g. ``("ndcg", 10)``.

        Raises
        ------
        ValueError
            ``objective`` is not ``METRIC@K`` with a metric of ``OBJECTIVE_METRICS`` and k >= 1.
        """
        m = re.fullmatch(r"([a-z_]+)@(\d+)", self.objective)
        if not m or m.group(1) not in OBJECTIVE_METRICS or int(m.group(2)) < 1:
            raise ValueError(
                f"objective must be METRIC@K with METRIC one of {', '.join(OBJECTIVE_METRICS)}"
                f" (got {self.objective!r})"
            )
        return m.group(1), int(m.group(2))

    def check(self) -> TuneOptions:
        """Validate every option.

        Returns
        -------
        TuneOptions
            ``self``.

        Raises
        ------
        ValueError
            The first option out of range (objective, validation, fraction, budget, max_routes,
            folds, or an unknown strategy).
        """
        self.metric()
        if self.validation not in VALIDATIONS:
            raise ValueError(f"validation must be one of {', '.join(VALIDATIONS)}")
        if not 0.0 < self.fraction < 1.0:
            raise ValueError("the validation fraction must be between 0 and 1")
        if self.budget_s <= 0:
            raise ValueError("the budget must be > 0 seconds")
        if not 1 <= self.max_routes <= 8:
            raise ValueError("max_routes must be in 1..8")
        if self.folds is not None and not 1 <= self.folds <= MAX_FOLDS:
            raise ValueError(f"folds must be in 1..{MAX_FOLDS}")
        if self.strategies is not None:
            check_strategy_names(self.strategies)
        return self


def parse_budget(text: str | float) -> float:
    """``"5m"``, ``"90s"``, ``"1h"``, ``"300"`` -> seconds.

    Parameters
    ----------
    text : str or float
        A number of seconds, or a number with a unit ``s``, ``m`` or ``h``.

    Returns
    -------
    float
        Seconds.

    Raises
    ------
    ValueError
        Not a number with an optional unit.
    """
    if isinstance(text, int | float):
        return float(text)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not m:
        raise ValueError(f"a budget is a number with an optional s/m/h unit, got {text!r}")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def parse_strategies(text: str | None) -> list[str] | None:
    """``"popular,ease,sequence"`` -> the names (None for none given). Unknown names are a
    ``ValueError`` naming the known ones: a typo must not silently shrink the search.

    Parameters
    ----------
    text : str or None
        Comma-separated strategy names; None or blank for none.

    Returns
    -------
    list[str] or None
        The names, in order; None when none was given.

    Raises
    ------
    ValueError
        An unknown name.
    """
    if text is None or not str(text).strip():
        return None
    names = [s.strip() for s in str(text).split(",") if s.strip()]
    check_strategy_names(names)
    return names


def check_strategy_names(names: Sequence[str]) -> None:
    """Check that every name is a known strategy.

    Parameters
    ----------
    names : Sequence[str]
        Strategy names; must not be empty.

    Raises
    ------
    ValueError
        An unknown name, or no name at all (the message lists the known ones).
    """
    from strategies import STRATEGY_NAMES

    unknown = [s for s in names if s not in STRATEGY_NAMES]
    if unknown or not names:
        raise ValueError(
            f"unknown strategies {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"known strategies: {', '.join(STRATEGY_NAMES)}"
        )


@dataclass
class Clock:
    """The budget, and a progress bar over it (seconds).

    Attributes
    ----------
    budget_s : float
        The budget, in seconds.
    progress : bool
        Show a progress bar (only when stderr is a terminal).
    start : float
        ``time.perf_counter()`` at creation.
    bar : Any
        The tqdm bar, or None.
    """

    budget_s: float
    progress: bool
    start: float = field(default_factory=time.perf_counter)
    bar: Any = None

    def __post_init__(self) -> None:
        if self.progress:
            from tqdm.auto import tqdm

            # disable=None: no bar (no carriage returns) when stderr is not a terminal.
            self.bar = tqdm(
                total=round(self.budget_s), unit="s", desc="tune", dynamic_ncols=True, disable=None
            )

    def elapsed(self) -> float:
        """Returns
        -------
        float
            Seconds since the clock started.
        """
        return time.perf_counter() - self.start

    def left(self) -> float:
        """Returns
        -------
        float
            Seconds of budget left, never negative.
        """
        return max(self.budget_s - self.elapsed(), 0.0)

    def tick(self, desc: str | None = None) -> None:
        """Move the progress bar, and a recorded job's progress, to the elapsed time.

        Parameters
        ----------
        desc : str or None
            New description for the bar (first 40 characters); None keeps it.
        """
        from recsys.ops import jobs

        # The recorded job's progress too (recsys.ops.jobs; nothing when none is recorded).
        jobs.report(self.elapsed() / max(self.budget_s, 1e-9), f"tune: {desc or 'search'}")
        if self.bar is not None and not self.bar.disable:
            if desc:
                self.bar.set_description(desc[:40])
            self.bar.n = min(round(self.elapsed()), self.bar.total)
            self.bar.refresh()

    def close(self) -> None:
        """Fill the progress bar and close it (no-op without a bar)."""
        if self.bar is not None and not self.bar.disable:
            self.bar.n = self.bar.total
            self.bar.close()
