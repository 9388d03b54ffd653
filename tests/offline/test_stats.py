"""Paired tests over users: intervals, p-values and verdicts behave as statistics should."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.offline.evaluation import stats
from recsys.serving import proportions


def test_identical_values_are_no_difference():
    rng = np.random.default_rng(1)
    a = rng.random(500)
    c = stats.compare(a, a.copy(), metric="ndcg@10", name_a="A", name_b="A2")
    assert c.diff == 0.0
    assert c.ci_low == 0.0 and c.ci_high == 0.0
    assert c.p_value == 1.0
    assert not c.significant
    assert c.verdict.startswith("no significant difference")


def test_clear_improvement_is_flagged_better_with_interval_around_truth():
    rng = np.random.default_rng(2)
    a = rng.random(800)
    b = np.clip(a + 0.05 + rng.normal(0, 0.1, 800), 0, None)
    c = stats.compare(a, b, metric="ndcg@10", name_a="pop", name_b="ease")
    true = float((b - a).mean())
    assert c.significant
    assert c.ci_low < true < c.ci_high
    assert c.ci_low > 0
    assert c.p_value < 0.01
    assert c.verdict.startswith("ease is better than pop on ndcg@10 (+0.0")
    # Swapping the roles flips the sign and the verdict.
    r = stats.compare(b, a, metric="ndcg@10", name_a="ease", name_b="pop")
    assert r.diff == pytest.approx(-c.diff)
    assert r.verdict.startswith("pop is worse than ease")


def test_false_positive_rate_under_the_null_is_near_alpha():
    # Two samples from the same distribution: about 5% of comparisons may be "significant".
    flagged = 0
    trials = 60
    for s in range(trials):
        rng = np.random.default_rng(100 + s)
        a = rng.random(200)
        b = rng.random(200)
        flagged += stats.compare(a, b, resamples=500, seed=s).significant
    assert flagged <= 9  # binomial(60, 0.05) exceeds 9 with probability < 0.2%


def test_holm_step_down_rejects_in_order_and_stops_at_the_first_survivor():
    # Sorted: a 0.01 < 0.05/3; c 0.03 >= 0.05/2 stops it, so b (0.04 < 0.05) is not reached.
    assert stats.holm({"a": 0.01, "b": 0.04, "c": 0.03}, 0.05) == {"a"}
    # Step-down is more powerful than Bonferroni: b passes at 0.05/1 once a is rejected.
    assert stats.holm({"a": 0.01, "b": 0.04}, 0.05) == {"a", "b"}
    assert stats.holm({}, 0.05) == set()
    assert stats.holm({1: 0.2}, 0.1) == set()


def test_holm_keeps_the_familywise_false_positive_rate_under_the_null():
    # Six true null hypotheses per family (six history bins, say) tested at alpha 0.1: without
    # a correction at least one is "significant" in ~47 % of families; with Holm in <= 10 %.
    rng = np.random.default_rng(5)
    families = 400
    raw = holm = 0
    for _ in range(families):
        p = dict(enumerate(rng.random(6)))  # p-values are uniform under the null
        raw += any(v < 0.1 for v in p.values())
        holm += bool(stats.holm(p, 0.1))
    assert raw > 0.35 * families
    assert holm <= 0.14 * families  # binomial(400, 0.1) exceeds 56 with probability < 1%


def test_seeded_results_are_reproducible_and_interval_matches_normal_theory():
    rng = np.random.default_rng(3)
    d = rng.normal(0.02, 0.2, 2000)
    lo1, hi1, _ = stats.bootstrap_ci(d, seed=7)
    lo2, hi2, _ = stats.bootstrap_ci(d, seed=7)
    assert (lo1, hi1) == (lo2, hi2)
    se = d.std(ddof=1) / np.sqrt(d.size)
    assert lo1 == pytest.approx(d.mean() - 1.96 * se, abs=0.25 * se)
    assert hi1 == pytest.approx(d.mean() + 1.96 * se, abs=0.25 * se)


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="differ in length"):
        stats.compare(np.zeros(3), np.zeros(4))


def test_coverage_comparison_over_lists():
    rng = np.random.default_rng(4)
    n_users, n_items = 300, 200
    # A recommends from 20 items, B from all 200: B covers far more of the catalogue.
    a = rng.choice(20, size=(n_users, 10))
    b = rng.choice(n_items, size=(n_users, 10))
    c = stats.compare_sets(a, b, n_items, metric="coverage@10", name_a="pop", name_b="ease")
    assert c.mean_a == pytest.approx(len(np.unique(a)) / n_items)
    assert c.mean_b == pytest.approx(len(np.unique(b)) / n_items)
    assert c.significant and c.diff > 0
    # Resampled coverage is biased low; the corrected interval still holds the observed value.
    assert c.ci_low - 1e-9 <= c.diff <= c.ci_high + 1e-9
    same = stats.compare_sets(a, a.copy(), n_items)
    assert not same.significant and same.diff == 0


def test_wilson_interval_known_values():
    lo, hi = proportions.wilson_interval(10, 100)
    # Reference values of the Wilson score interval for 10/100.
    assert lo == pytest.approx(0.0552, abs=1e-3)
    assert hi == pytest.approx(0.1744, abs=1e-3)
    assert all(np.isnan(proportions.wilson_interval(0, 0)))
