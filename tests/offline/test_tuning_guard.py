"""The tuner's statistical guard (recsys.offline.tuning.guard) on synthetic per-row values:
when a departure from a default is taken, and when the final profile passes."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.offline.tuning.guard import (
    Rows,
    Verdict,
    beats,
    guard_verdict,
    holm_departures,
    newest_means,
    not_behind,
    paired_test,
    user_means,
)

N = 60
OBJ = "ndcg@10"
P_MIN = 1 / 1001  # the smallest p-value of the gate's 1000 sign flips


def two_folds(n_users: int = N // 2) -> Rows:
    """Every user has one row in each of two folds: rows 0..n-1 the newest fold, then the
    older one."""
    user = np.tile(np.arange(n_users), 2)
    fold = np.repeat([0, 1], n_users)
    return Rows(user, fold, 2)


def test_rows_of_one_user_are_one_unit_and_undefined_rows_drop_out():
    a = np.array([1.0, 3.0, np.nan, 5.0])
    b = np.array([0.0, 2.0, 4.0, 6.0])
    a_u, b_u = user_means(a, b, np.array([7, 7, 8, 9]))
    assert a_u.tolist() == [2.0, 5.0] and b_u.tolist() == [1.0, 6.0]  # user 8: only NaN
    assert paired_test(a, b, Rows(np.array([7, 7, 8, 9]), np.zeros(4)), OBJ, 0.1).n_users == 2


def test_a_clear_win_is_taken():
    base = np.full(N, 0.5)
    test = beats(base, base + 0.1, Rows.one_per_user(N), OBJ, 0.1, "base", "new")
    assert test == Verdict(
        "new is better than base on ndcg@10 (+0.1000, 95% CI [0.1000, 0.1000], p=1.0e-03)",
        True,
        pytest.approx(P_MIN),
    )


def test_a_tie_or_noise_is_not_taken():
    rows = Rows.one_per_user(N)
    base = np.full(N, 0.5)
    assert beats(base, base.copy(), rows, OBJ, 0.1, "base", "new") == (
        "no significant difference between new and base on ndcg@10 "
        "(+0.0000, 95% CI [0.0000, 0.0000], p=1.000)",
        False,
        1.0,
    )
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 0.2, N)
    noise -= noise.mean()  # as often ahead as behind
    verdict, better, p = beats(base, base + noise, rows, OBJ, 0.1, "base", "new")
    assert not better and p > 0.5
    assert verdict.startswith("no significant difference between new and base on ndcg@10 (")


def test_a_significant_loss_is_not_taken():
    base = np.full(N, 0.5)
    verdict, better, p = beats(base, base - 0.1, Rows.one_per_user(N), OBJ, 0.1, "base", "new")
    assert not better and p == pytest.approx(P_MIN)
    assert verdict.startswith("new is worse than base on ndcg@10 (-0.1000")


def test_many_rows_of_two_users_are_not_evidence():
    """Sixty rows, but two users: the paired test has two units, and two agreeing signs are
    a coin flip away from chance."""
    rows = Rows(np.repeat([0, 1], N // 2), np.zeros(N, dtype=np.int64))
    base = np.full(N, 0.5)
    assert paired_test(base, base + 0.1, rows, OBJ, 0.1).n_users == 2
    assert not beats(base, base + 0.1, rows, OBJ, 0.1).better
    one_user = Rows(np.zeros(N, dtype=np.int64), np.zeros(N, dtype=np.int64))
    assert paired_test(base, base + 0.1, one_user, OBJ, 0.1) is None
    assert beats(base, base + 0.1, one_user, OBJ, 0.1) == ("too few users to compare", False, 1.0)


def test_a_gain_only_the_older_fold_shows_is_vetoed_by_the_newest():
    rows = two_folds()
    newest = rows.fold == 0
    base = np.full(N, 0.5)
    drifted = np.where(newest, 0.45, 1.0)  # far ahead on the older fold, behind on the newest
    assert newest_means(base, drifted, rows) == pytest.approx((0.5, 0.45))
    assert beats(base, drifted, rows, OBJ, 0.1, "base", "new") == (
        "new is better than base on ndcg@10 (+0.2250, 95% CI [0.2250, 0.2250], p=1.0e-03)"
        ", but not on the newest fold (0.4500 vs 0.5000)",
        False,
        pytest.approx(P_MIN),
    )
    # Ahead on both folds: taken.
    assert beats(base, np.where(newest, 0.55, 1.0), rows, OBJ, 0.1).better
    # On the older fold's rows alone there is no newest fold to veto.
    older = np.flatnonzero(~newest)
    assert newest_means(base[older], drifted[older], rows.take(older)) is None
    assert beats(base[older], drifted[older], rows.take(older), OBJ, 0.1).better
    # One fold: no newest-fold check at all.
    assert newest_means(base, drifted, Rows.one_per_user(N)) is None
    assert beats(base, drifted, Rows.one_per_user(N), OBJ, 0.1).better


def test_a_tie_is_kept_unless_the_newest_fold_shows_a_significant_loss():
    rows = two_folds()
    newest = rows.fold == 0
    rng = np.random.default_rng(3)
    base = rng.random(N)
    noise = rng.normal(0.0, 0.2, N)
    for f in (newest, ~newest):
        noise[f] -= noise[f].mean()
    # Tied overall; on the newest fold a little behind, within its noise: kept.
    dip = base + noise + np.where(newest, -0.01, 0.01)
    assert dip[newest].mean() < base[newest].mean() and dip.mean() >= base.mean()
    assert not_behind(base, dip, rows, OBJ, 0.1) is True
    # Ahead overall only through the older fold, clearly behind on the newest: vetoed.
    drift = base + np.where(newest, -0.3, 0.4)
    assert drift.mean() > base.mean()
    assert not_behind(base, drift, rows, OBJ, 0.1) is False
    # The same values with one fold: nothing to veto with.
    assert not_behind(base, drift, Rows.one_per_user(N), OBJ, 0.1) is True
    # Behind overall, or nothing defined: never kept.
    assert not_behind(base, base - 0.01, rows, OBJ, 0.1) is False
    assert not_behind(base, np.full(N, np.nan), rows, OBJ, 0.1) is False


def test_holms_correction_drops_a_borderline_departure_of_a_family():
    alone = {"a": Verdict("a wins", True, 0.03)}
    assert holm_departures(alone, 0.05) == alone  # alone, 0.03 < 0.05 passes
    # The same test beside an untaken one: two hypotheses, the smallest p must beat 0.05 / 2.
    family = {"a": Verdict("a wins", True, 0.03), "b": Verdict("b ties", False, 0.5), "c": None}
    out = holm_departures(family, 0.05)
    assert out == {
        "a": Verdict("a wins; not significant after Holm's correction over 2 bins", False, 0.03),
        "b": Verdict("b ties", False, 0.5),
        "c": None,
    }
    # Step-down: 0.01 < 0.05/3 is kept, 0.02 < 0.05/2 too, 0.04 < 0.05/1 too ...
    steps = {k: Verdict(k, True, p) for k, p in {"x": 0.01, "y": 0.02, "z": 0.04}.items()}
    assert all(t.better for t in holm_departures(steps, 0.05).values())
    # ... but once one fails (0.03 >= 0.05/2) every larger p fails with it.
    steps["y"] = Verdict("y", True, 0.03)
    held = holm_departures(steps, 0.05, family="routes")
    assert [k for k, t in held.items() if t.better] == ["x"]
    assert held["z"].verdict == "z; not significant after Holm's correction over 3 routes"


def _served(profile: float | np.ndarray, ease: float = 0.4, popular: float = 0.3):
    return {
        "profile": np.broadcast_to(profile, N).astype(float),
        "ease": np.full(N, ease),
        "popular": np.full(N, popular),
    }


def test_the_guard_passes_a_profile_ahead_of_every_single_strategy():
    g = guard_verdict(_served(0.5), ["ease", "popular"], Rows.one_per_user(N), OBJ)
    assert g["verdict"] == "passed" and g["best_single"] == "ease"
    assert g["means"] == {"profile": 0.5, "ease": 0.4, "popular": 0.3}
    assert [(c["baseline"], c["ok"]) for c in g["checks"]] == [("ease", True), ("popular", True)]
    assert g["reason"] == (
        "profile 0.5000 >= best single ease 0.4000 and popular 0.3000 on validation"
    )
    # A tie with the best single strategy passes too.
    assert (
        guard_verdict(_served(0.4), ["ease", "popular"], Rows.one_per_user(N), OBJ)["verdict"]
        == "passed"
    )


def test_the_guard_fails_a_profile_behind_the_best_single_strategy():
    g = guard_verdict(_served(0.35), ["ease", "popular"], Rows.one_per_user(N), OBJ)
    assert g["verdict"] == "failed" and g["best_single"] == "ease"
    assert [(c["baseline"], c["ok"]) for c in g["checks"]] == [("ease", False), ("popular", True)]
    assert g["reason"] == (
        "profile is worse than ease on validation (0.3500 vs best single ease 0.4000)"
    )
    # Popularity best: checked once.
    g = guard_verdict(_served(0.2, ease=0.1), ["ease", "popular"], Rows.one_per_user(N), OBJ)
    assert g["best_single"] == "popular" and [c["baseline"] for c in g["checks"]] == ["popular"]
    assert g["reason"].startswith("profile is worse than popular on validation")


def test_the_guard_fails_a_significant_paired_loss_even_with_a_higher_mean():
    """The profile's mean counts rows a baseline leaves undefined; on the rows both serve it
    is behind for every user."""
    profile = np.r_[np.full(10, 1.0), np.full(N - 10, 0.35)]
    values = _served(profile)
    values["ease"][:10] = np.nan
    g = guard_verdict(values, ["ease", "popular"], Rows.one_per_user(N), OBJ)
    assert g["means"]["profile"] > g["means"]["ease"]
    assert g["verdict"] == "failed" and g["checks"][0]["ok"] is False
    assert g["checks"][0]["verdict"].startswith("profile is worse than ease on ndcg@10 (-0.0500")
