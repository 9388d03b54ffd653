"""Paired significance tests over users: "is configuration B better than A?".

Both configurations are scored on the *same* test users, so the natural unit is the per-user
difference ``d = b - a``. Two tests are offered, both seeded and vectorised with numpy:

* a paired bootstrap: resample users with replacement and take the mean of ``d`` each time; the
  2.5 and 97.5 percentiles give the 95% interval of the mean difference;
* a paired sign-flip permutation test: under "no difference" each user's ``d`` is as likely to
  be ``+d`` as ``-d``; the p-value is the share of random sign flips whose mean is at least as
  far from zero as the observed one (two-sided, with the +1 correction so p is never 0).

``compare`` returns both the bootstrap interval and the permutation p-value (the interval says
how big, the p-value how sure). A difference is called significant only when ``p < alpha`` *and*
the interval excludes zero, so the verdict never contradicts the numbers printed beside it.

Set-level metrics such as catalogue coverage have no per-user value; ``compare_sets`` applies the
same two resampling schemes to the per-user recommendation lists and recomputes the metric.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TypeVar

import numpy as np
import scipy.sparse as sp

K = TypeVar("K")

DEFAULT_RESAMPLES = 2000
# Resamples processed per vectorised chunk: bounds memory at chunk * n_users floats.
_CHUNK = 250


@dataclass
class Comparison:
    """B - A on one metric, paired over users.

    Attributes
    ----------
    metric : str
        Metric key (e.g. ``ndcg@10``).
    a, b : str
        Names of the two configurations.
    mean_a, mean_b : float
        The metric of each (mean over users, or the set metric); NaN with no users.
    diff : float
        ``mean_b - mean_a``.
    ci_low, ci_high : float
        95% bootstrap interval of ``diff``.
    p_value : float
        Two-sided permutation p-value of ``diff == 0``.
    n_users : int
        Users paired.
    significant : bool
        ``p_value < alpha`` and the interval excludes 0.
    verdict : str
        One sentence saying so (``verdict_line``).
    method : str
        How the interval and p-value were computed.
    """

    metric: str
    a: str
    b: str
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    n_users: int
    significant: bool
    verdict: str
    method: str = "paired bootstrap CI + sign-flip permutation p"

    def to_dict(self) -> dict:
        """Returns
        -------
        dict
            Every field, by name (JSON-ready).
        """
        return asdict(self)


def _check_paired(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired arrays differ in length: {a.shape[0]} vs {b.shape[0]}")
    return a, b


def bootstrap_ci(
    d: np.ndarray,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, np.ndarray]:
    """Percentile interval of mean(d) from ``resamples`` user resamples; also the draws.

    Parameters
    ----------
    d : np.ndarray
        Per-user values (flattened).
    resamples : int
        Bootstrap resamples.
    seed : int
        Random seed.
    confidence : float
        Interval coverage, in (0, 1).

    Returns
    -------
    tuple[float, float, np.ndarray]
        ``(low, high, means)``: the interval and the ``(resamples,)`` resampled means; NaN,
        NaN and an empty array when ``d`` is empty.
    """
    d = np.asarray(d, dtype=np.float64).ravel()
    n = d.shape[0]
    if n == 0:
        return float("nan"), float("nan"), np.zeros(0)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        r = min(_CHUNK, resamples - start)
        idx = rng.integers(0, n, size=(r, n))
        means[start : start + r] = d[idx].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(lo), float(hi), means


def sign_flip_pvalue(d: np.ndarray, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> float:
    """Two-sided p-value of mean(d) == 0 by random sign flips of the per-user differences.

    Parameters
    ----------
    d : np.ndarray
        Per-user differences (flattened).
    resamples : int
        Random sign-flip draws.
    seed : int
        Random seed (the stream of ``seed + 1``, independent of the bootstrap's).

    Returns
    -------
    float
        In (0, 1]; 1.0 when every difference is 0; NaN when ``d`` is empty.
    """
    d = np.asarray(d, dtype=np.float64).ravel()
    n = d.shape[0]
    if n == 0:
        return float("nan")
    observed = abs(d.mean())
    if not np.any(d):
        return 1.0  # every user identical: nothing to test
    rng = np.random.default_rng(seed + 1)
    # Relative tolerance so floating-point noise in a tie still counts as "as extreme".
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    extreme = 0
    for start in range(0, resamples, _CHUNK):
        r = min(_CHUNK, resamples - start)
        signs = rng.integers(0, 2, size=(r, n), dtype=np.int8) * 2 - 1
        perm = np.abs(signs @ d) / n
        extreme += int(np.count_nonzero(perm >= observed - tol))
    return (extreme + 1) / (resamples + 1)


def verdict_line(
    metric: str, a: str, b: str, diff: float, lo: float, hi: float, p: float, significant: bool
) -> str:
    """One sentence stating the comparison's outcome with its numbers.

    Parameters
    ----------
    metric : str
        Metric key.
    a, b : str
        Names of the configurations (``b`` is the one judged).
    diff : float
        ``B - A``.
    lo, hi : float
        95% interval of ``diff``.
    p : float
        p-value.
    significant : bool
        Whether the difference is significant.

    Returns
    -------
    str
        "B is better/worse than A on metric (...)" or "no significant difference ...".
    """
    numbers = f"({diff:+.4f}, 95% CI [{lo:.4f}, {hi:.4f}], p={format_p(p)})"
    if not significant:
        return f"no significant difference between {b} and {a} on {metric} {numbers}"
    word = "better" if diff > 0 else "worse"
    return f"{b} is {word} than {a} on {metric} {numbers}"


def format_p(p: float) -> str:
    """A p-value for tables: three decimals, scientific notation below 0.001.

    Parameters
    ----------
    p : float
        The p-value (NaN allowed).

    Returns
    -------
    str
        e.g. ``0.042``, ``3.1e-05`` or ``nan``.
    """
    if np.isnan(p):
        return "nan"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _decide(diff: float, lo: float, hi: float, p: float, alpha: float) -> bool:
    if any(np.isnan(x) for x in (diff, lo, hi, p)):
        return False
    return bool(p < alpha and (lo > 0 or hi < 0))


def holm(pvalues: Mapping[K, float], alpha: float) -> set[K]:
    """The hypotheses Holm's step-down procedure rejects at family-wise level ``alpha``: in
    order of p-value, the i-th smallest (0-based) of m is rejected while ``p < alpha / (m - i)``;
    the first that is not stops it.

    Parameters
    ----------
    pvalues : Mapping[K, float]
        Hypothesis key -> p-value.
    alpha : float
        Family-wise error level, in (0, 1).

    Returns
    -------
    set[K]
        The keys of the rejected hypotheses.
    """
    m = len(pvalues)
    out: set[K] = set()
    for i, (key, p) in enumerate(sorted(pvalues.items(), key=lambda kv: kv[1])):
        if not p < alpha / (m - i):
            break
        out.add(key)
    return out


def compare(
    a: np.ndarray,
    b: np.ndarray,
    metric: str = "metric",
    name_a: str = "A",
    name_b: str = "B",
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    alpha: float = 0.05,
) -> Comparison:
    """Paired comparison of per-user values ``a`` and ``b`` (same users, same order).

    Parameters
    ----------
    a, b : np.ndarray
        Per-user values of configurations A and B, same length.
    metric : str
        Metric key for the result.
    name_a, name_b : str
        Names of the configurations.
    resamples : int
        Bootstrap and permutation resamples.
    seed : int
        Random seed.
    alpha : float
        Significance level.

    Returns
    -------
    Comparison
        ``B - A``, its interval, p-value and verdict.

    Raises
    ------
    ValueError
        ``a`` and ``b`` differ in length.
    """
    a, b = _check_paired(a, b)
    d = b - a
    lo, hi, _ = bootstrap_ci(d, resamples=resamples, seed=seed)
    p = sign_flip_pvalue(d, resamples=resamples, seed=seed)
    diff = float(d.mean()) if d.size else float("nan")
    sig = _decide(diff, lo, hi, p, alpha)
    return Comparison(
        metric=metric,
        a=name_a,
        b=name_b,
        mean_a=float(a.mean()) if a.size else float("nan"),
        mean_b=float(b.mean()) if b.size else float("nan"),
        diff=diff,
        ci_low=lo,
        ci_high=hi,
        p_value=p,
        n_users=int(a.size),
        significant=sig,
        verdict=verdict_line(metric, name_a, name_b, diff, lo, hi, p, sig),
    )


def _indicator(lists: np.ndarray, n_items: int) -> sp.csr_matrix:
    """(n_users, n_items) 0/1 matrix of the items in each user's list (-1 = padding)."""
    lists = np.asarray(lists, dtype=np.int64)
    rows = np.repeat(np.arange(lists.shape[0]), lists.shape[1])
    cols = lists.ravel()
    keep = cols >= 0
    m = sp.csr_matrix(
        (np.ones(int(keep.sum()), np.float32), (rows[keep], cols[keep])),
        shape=(lists.shape[0], n_items),
    )
    m.data[:] = 1.0
    return m


def coverage_from_counts(counts: np.ndarray, n_items: int) -> np.ndarray:
    """Catalogue coverage of each row of per-item recommendation counts.

    Parameters
    ----------
    counts : np.ndarray
        ``(..., n_items)``: how often each item is recommended, per row.
    n_items : int
        Catalogue size.

    Returns
    -------
    np.ndarray
        ``(...)``: share of the catalogue with a nonzero count, per row.
    """
    return np.count_nonzero(counts > 0, axis=-1) / max(n_items, 1)


def compare_sets(
    lists_a: np.ndarray,
    lists_b: np.ndarray,
    n_items: int,
    metric: str = "coverage",
    name_a: str = "A",
    name_b: str = "B",
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    alpha: float = 0.05,
    set_metric: Callable[[np.ndarray, int], np.ndarray] = coverage_from_counts,
) -> Comparison:
    """Paired comparison of a metric of the *set* of lists (catalogue coverage by default).

    Bootstrap: resample users, recompute the metric for both configurations on the same resample;
    the percentile interval is bias-corrected (shifted by median(bootstrap) - observed).
    Permutation: for each user swap which configuration's list counts as A's, at random.

    Parameters
    ----------
    lists_a, lists_b : np.ndarray
        ``(n_users, length)`` item indices recommended by A and B (-1: padding), same users.
    n_items : int
        Catalogue size.
    metric : str
        Metric key for the result.
    name_a, name_b : str
        Names of the configurations.
    resamples : int
        Bootstrap and permutation resamples.
    seed : int
        Random seed.
    alpha : float
        Significance level.
    set_metric : Callable[[np.ndarray, int], np.ndarray]
        Per-row metric of ``(rows, n_items)`` item counts (``coverage_from_counts``).

    Returns
    -------
    Comparison
        ``B - A``, its interval, p-value and verdict.

    Raises
    ------
    ValueError
        The list arrays differ in number of users.
    """
    ma = _indicator(lists_a, n_items)
    mb = _indicator(lists_b, n_items)
    if ma.shape[0] != mb.shape[0]:
        raise ValueError("paired list arrays differ in number of users")
    n = ma.shape[0]
    ones = np.ones((1, n), np.float32)
    cov_a = float(set_metric(np.asarray(ones @ ma), n_items)[0])
    cov_b = float(set_metric(np.asarray(ones @ mb), n_items)[0])
    diff = cov_b - cov_a
    rng = np.random.default_rng(seed)
    boots = np.empty(resamples)
    extreme = 0
    for start in range(0, resamples, _CHUNK):
        r = min(_CHUNK, resamples - start)
        idx = rng.integers(0, n, size=(r, n))
        # Per-resample count of how often each user was drawn (bincount beats np.add.at).
        flat = (np.arange(r)[:, None] * n + idx).ravel()
        w = np.bincount(flat, minlength=r * n).reshape(r, n).astype(np.float32)
        boots[start : start + r] = set_metric(np.asarray(w @ mb), n_items) - set_metric(
            np.asarray(w @ ma), n_items
        )
        s = rng.integers(0, 2, size=(r, n)).astype(np.float32)
        pa = np.asarray(s @ ma) + np.asarray((1 - s) @ mb)
        pb = np.asarray(s @ mb) + np.asarray((1 - s) @ ma)
        perm = set_metric(pb, n_items) - set_metric(pa, n_items)
        extreme += int(np.count_nonzero(np.abs(perm) >= abs(diff) - 1e-12))
    if n:
        # Coverage of a resample is biased low (a resample holds ~63% distinct users), so the
        # raw percentiles can miss the observed value; shift them by the bootstrap bias (median
        # based, so the interval always holds the observed difference).
        bias = float(np.median(boots)) - diff
        lo, hi = (float(x) - bias for x in np.quantile(boots, [0.025, 0.975]))
    else:
        lo, hi = float("nan"), float("nan")
    p = 1.0 if diff == 0 and np.all(boots == 0) else (extreme + 1) / (resamples + 1)
    sig = _decide(diff, lo, hi, p, alpha)
    return Comparison(
        metric=metric,
        a=name_a,
        b=name_b,
        mean_a=cov_a,
        mean_b=cov_b,
        diff=diff,
        ci_low=lo,
        ci_high=hi,
        p_value=p,
        n_users=n,
        significant=sig,
        verdict=verdict_line(metric, name_a, name_b, diff, lo, hi, p, sig),
        method="paired bootstrap CI + list-swap permutation p (set metric)",
    )


def mean_ci(
    values: np.ndarray, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of per-user values and its bootstrap 95% interval (for plots and tables).

    Parameters
    ----------
    values : np.ndarray
        Per-user values.
    resamples : int
        Bootstrap resamples.
    seed : int
        Random seed.

    Returns
    -------
    tuple[float, float, float]
        ``(mean, low, high)``; NaN for all three when ``values`` is empty.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    lo, hi, _ = bootstrap_ci(values, resamples=resamples, seed=seed)
    return float(values.mean()), lo, hi
