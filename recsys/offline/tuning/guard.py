"""The statistical guard: when a departure from a default is taken, as pure functions.

Every choice the search makes away from a default (tuned hyperparameters over the shipped
ones, a blend over the best single strategy, a route's own choice over the champion, the
profile over every single strategy) has to pass one of these tests on the validation rows.
Their inputs are per-row values of the objective (NaN where a configuration does not serve
the row) and ``Rows``, what the guard needs to know of those rows: each row's user (the unit
of a paired test: a user's rows in several folds are averaged first) and fold (0 = the
newest, the slice nearest to what will be served).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import numpy as np

K = TypeVar("K", bound=Hashable)

# Resamples of the paired test a departure must pass (the final guard uses stats' default).
RESAMPLES = 1000


@dataclass(frozen=True)
class Rows:
    """The validation rows a value array holds: ``user[i]`` is row i's user (any integer
    label), ``fold[i]`` its fold (0 = the newest) and ``n_folds`` how many folds the
    validation has (the newest-fold check applies only with two or more)."""

    user: np.ndarray
    fold: np.ndarray
    n_folds: int = 1

    @classmethod
    def one_per_user(cls, n: int) -> Rows:
        """``n`` rows, one per user, in a single fold.

        Parameters
        ----------
        n : int
            Number of rows.

        Returns
        -------
        Rows
            Users ``0..n-1``, all in fold 0.
        """
        return cls(np.arange(n), np.zeros(n, dtype=np.int64), 1)

    def __len__(self) -> int:
        return len(self.user)

    def take(self, idx: np.ndarray) -> Rows:
        """The rows ``idx`` of these (for value arrays that hold only those rows).

        Parameters
        ----------
        idx : np.ndarray
            Row indices (or a boolean mask) into these rows.

        Returns
        -------
        Rows
            The selected rows, same ``n_folds``.
        """
        return Rows(self.user[idx], self.fold[idx], self.n_folds)


class Verdict(NamedTuple):
    """A departure's test: the verdict line, whether it is taken, and the p-value (for a
    correction over a family of tests)."""

    verdict: str
    better: bool
    p_value: float


def user_means(a: np.ndarray, b: np.ndarray, user: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two per-row value arrays as per-user means over the rows where both are defined: the
    units of a paired test (one user's rows in two folds are not independent).

    Parameters
    ----------
    a, b : np.ndarray
        Per-row values, NaN where undefined.
    user : np.ndarray
        Each row's user label.

    Returns
    -------
    tuple[np.ndarray, np.ndarray]
        Per-user means of ``a`` and ``b`` (users in ascending label order).
    """
    ok = np.isfinite(a) & np.isfinite(b)
    _, g = np.unique(user[ok], return_inverse=True)
    counts = np.bincount(g)
    return np.bincount(g, weights=a[ok]) / counts, np.bincount(g, weights=b[ok]) / counts


def paired_test(
    base: np.ndarray,
    new: np.ndarray,
    rows: Rows,
    objective: str,
    alpha: float,
    a: str = "A",
    b: str = "B",
):
    """The gate's paired test of ``new`` against ``base`` at level ``alpha``, one user one
    unit (``recsys.offline.evaluation.stats.Comparison``); None with fewer than two users.

    Parameters
    ----------
    base : np.ndarray
        Per-row objective values of the default (NaN where it does not serve the row).
    new : np.ndarray
        Per-row values of the departure, same rows.
    rows : Rows
        The rows' users and folds.
    objective : str
        Metric name, for the verdict.
    alpha : float
        Significance level.
    a, b : str
        Names of the default and the departure, for the verdict.

    Returns
    -------
    Comparison or None
        ``new - base`` per user, with interval, p-value and verdict.
    """
    from recsys.offline.evaluation import stats

    base_u, new_u = user_means(base, new, rows.user)
    if len(base_u) < 2:
        return None
    return stats.compare(base_u, new_u, objective, a, b, resamples=RESAMPLES, alpha=alpha)


def newest_means(base: np.ndarray, new: np.ndarray, rows: Rows) -> tuple[float, float] | None:
    """Means of ``base`` and ``new`` over the newest fold's rows where both are defined; None
    with a single fold or no such row.

    Parameters
    ----------
    base : np.ndarray
        Per-row objective values of the default (NaN where it does not serve the row).
    new : np.ndarray
        Per-row values of the departure, same rows.
    rows : Rows
        The rows' users and folds.

    Returns
    -------
    tuple[float, float] or None
        ``(mean of base, mean of new)``.
    """
    if rows.n_folds < 2:
        return None
    ok = (rows.fold == 0) & np.isfinite(base) & np.isfinite(new)
    return (float(base[ok].mean()), float(new[ok].mean())) if ok.any() else None


def beats(
    base: np.ndarray,
    new: np.ndarray,
    rows: Rows,
    objective: str,
    alpha: float,
    a: str = "A",
    b: str = "B",
) -> Verdict:
    """Is ``new`` significantly better than ``base`` (paired over the same users, at level
    ``alpha``)? The rule every departure from a default must pass.

    With several folds, ``new`` must also be at least as good on the newest fold alone (the
    slice closest to what will be served): a gain that only the older folds show is drift,
    not something to bet the default on.

    Parameters
    ----------
    base : np.ndarray
        Per-row objective values of the default (NaN where it does not serve the row).
    new : np.ndarray
        Per-row values of the departure, same rows.
    rows : Rows
        The rows' users and folds.
    objective : str
        Metric name, for the verdict.
    alpha : float
        Significance level.
    a, b : str
        Names of the default and the departure, for the verdict.

    Returns
    -------
    Verdict
        The verdict line, whether the departure is taken, and the p-value (1.0 with too few
        users).
    """
    c = paired_test(base, new, rows, objective, alpha, a, b)
    if c is None:
        return Verdict("too few users to compare", False, 1.0)
    better = bool(c.significant and c.diff > 0)
    newest = newest_means(base, new, rows)
    if better and newest is not None and newest[1] < newest[0]:
        verdict = f"{c.verdict}, but not on the newest fold ({newest[1]:.4f} vs {newest[0]:.4f})"
        return Verdict(verdict, False, c.p_value)
    return Verdict(c.verdict, better, c.p_value)


def not_behind(base: np.ndarray, new: np.ndarray, rows: Rows, objective: str, alpha: float) -> bool:
    """``new``'s mean is at least ``base``'s over all rows (where both are defined), and
    ``new`` is not significantly worse on the newest fold's rows.

    For a tie the point estimate on one fold is a coin flip, not evidence: the newest fold
    holds a third of the rows or fewer, and two tied configurations trade places between
    folds. It vetoes the ensemble only when the newest slice shows a real loss (drift), at
    level ``alpha``.

    Parameters
    ----------
    base : np.ndarray
        Per-row objective values of the default (NaN where it does not serve the row).
    new : np.ndarray
        Per-row values of the departure, same rows.
    rows : Rows
        The rows' users and folds.
    objective : str
        Metric name, for the verdict.
    alpha : float
        Significance level.

    Returns
    -------
    bool
        True when ``new`` may replace ``base`` as a tie.
    """
    ok = np.isfinite(base) & np.isfinite(new)
    if not ok.any() or new[ok].mean() < base[ok].mean():
        return False
    if rows.n_folds < 2:
        return True
    newest = np.flatnonzero(rows.fold == 0)
    c = paired_test(base[newest], new[newest], rows.take(newest), objective, alpha)
    return c is None or not (c.significant and c.diff < 0)


def holm_departures(
    tests: Mapping[K, Verdict | None], alpha: float, family: str = "bins"
) -> dict[K, Verdict | None]:
    """``tests`` after Holm's step-down over all of them (the untaken ones count towards the
    family too): a departure stays taken only if Holm rejects its hypothesis at family-wise
    level ``alpha``; one that does not is no longer taken, and its verdict says why.

    With six bins tested at alpha each, one would pass by chance every other run, and a
    route cut on that is noise served to real users. Holm keeps the chance of any false
    departure within alpha (family-wise), and is never weaker than Bonferroni.

    Parameters
    ----------
    tests : Mapping[K, Verdict or None]
        Key (e.g. a history bin) -> its test; None for one not tested.
    alpha : float
        Family-wise significance level.
    family : str
        What the keys are, for the verdict ("bins", "routes"...).

    Returns
    -------
    dict[K, Verdict or None]
        The same keys; a taken departure Holm does not reject becomes untaken.
    """
    from recsys.offline.evaluation import stats

    tested = {key: t.p_value for key, t in tests.items() if t}
    held = stats.holm(tested, alpha)
    out: dict[K, Verdict | None] = {}
    for key, t in tests.items():
        if t and t.better and key not in held:
            note = f"; not significant after Holm's correction over {len(tested)} {family}"
            t = Verdict(t.verdict + note, False, t.p_value)
        out[key] = t
    return out


def guard_verdict(
    values: Mapping[str, np.ndarray], singles: Sequence[str], rows: Rows, objective: str
) -> dict[str, Any]:
    """The final guard over per-row values through the full request path: ``values`` holds
    ``"profile"``, ``"popular"`` and every name of ``singles``. The profile passes if its mean
    is at least the best single configuration's and popularity's, and a paired test finds it
    not significantly worse than either; the verdict dict says which and why.

    Parameters
    ----------
    values : Mapping[str, np.ndarray]
        Configuration name -> per-row objective values (NaN where undefined), same rows.
    singles : Sequence[str]
        The single-strategy configurations (keys of ``values``), at least one.
    rows : Rows
        The rows' users and folds.
    objective : str
        Metric name, for the verdicts.

    Returns
    -------
    dict[str, Any]
        ``verdict`` ("passed" / "failed"), ``best_single``, ``means`` (name -> mean, 6
        decimals), ``checks`` (per baseline: ``ok``, ``verdict``, ``diff``) and ``reason``.
    """
    from recsys.offline.evaluation import stats

    means = {k: float(np.nanmean(v)) for k, v in values.items()}
    best = max(singles, key=lambda s: means[s])
    checks = []
    passed = True
    for base in dict.fromkeys([best, "popular"]):
        base_u, prof_u = user_means(values[base], values["profile"], rows.user)
        c = stats.compare(base_u, prof_u, objective, base, "profile", seed=0)
        ok = means["profile"] >= means[base] - 1e-12 and not (c.significant and c.diff < 0)
        passed &= ok
        checks.append({"baseline": base, "ok": ok, "verdict": c.verdict, "diff": c.diff})
    return {
        "verdict": "passed" if passed else "failed",
        "best_single": best,
        "means": {k: round(v, 6) for k, v in means.items()},
        "checks": checks,
        "reason": (
            f"profile {means['profile']:.4f} >= best single {best} {means[best]:.4f} "
            f"and popular {means['popular']:.4f} on validation"
            if passed
            else "profile is worse than "
            + ", ".join(c["baseline"] for c in checks if not c["ok"])
            + f" on validation ({means['profile']:.4f} vs best single {best} "
            f"{means[best]:.4f})"
        ),
    }
