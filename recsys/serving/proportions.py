"""Statistics of proportions (click-through, conversion): intervals and a test.

Pure arithmetic with no imports of ours, shared by the offline evaluation
(``recsys.offline.evaluation.stats``) and the online experiments report
(``recsys.serving.experiments_report``) without either importing the other.
"""

from __future__ import annotations

import math


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion (click-through, conversion).

    Parameters
    ----------
    successes : int
        Trials that succeeded.
    trials : int
        All trials.
    z : float, optional
        The normal quantile (the default gives a 95% interval).

    Returns
    -------
    tuple of (float, float)
        ``(low, high)`` within [0, 1]; both NaN when ``trials`` is 0 or less.
    """
    if trials <= 0:
        return float("nan"), float("nan")
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def newcombe_difference(s1: int, n1: int, s2: int, n2: int) -> tuple[float, float, float]:
    """p2 - p1 and its Newcombe (hybrid Wilson) 95% interval.

    Parameters
    ----------
    s1, n1 : int
        Successes and trials of the first proportion.
    s2, n2 : int
        Successes and trials of the second.

    Returns
    -------
    tuple of (float, float, float)
        ``(difference, low, high)``; all NaN when either ``n`` is 0.
    """
    if n1 == 0 or n2 == 0:
        return float("nan"), float("nan"), float("nan")
    p1, p2 = s1 / n1, s2 / n2
    l1, u1 = wilson_interval(s1, n1)
    l2, u2 = wilson_interval(s2, n2)
    d = p2 - p1
    lo = d - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2)
    hi = d + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)
    return d, lo, hi


def two_proportion_p(s1: int, n1: int, s2: int, n2: int) -> float:
    """Two-sided p-value of the two-proportion z-test of s1/n1 against s2/n2.

    Parameters
    ----------
    s1, n1 : int
        Successes and trials of the first proportion.
    s2, n2 : int
        Successes and trials of the second.

    Returns
    -------
    float
        The p-value; NaN when either ``n`` is 0, 1.0 when the pooled variance is 0.
    """
    if n1 == 0 or n2 == 0:
        return float("nan")
    p = (s1 + s2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    z = (s2 / n2 - s1 / n1) / se
    return math.erfc(abs(z) / math.sqrt(2))
