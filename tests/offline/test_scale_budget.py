"""Issue 29's budgets at a real shop's size, from the cost formulas alone (nothing is fitted):
the default memory budget and the fit time limit leave EASE out at L and keep the others, and
``recsys tune`` samples its validation users and drops strategies whose fits cannot fit."""

from __future__ import annotations

import numpy as np
import pytest

from features.interactions import InteractionData
from recsys.offline.training import DEFAULT_BUDGET_SHARE, over_budget
from recsys.offline.tuning.folds import Validation, validation_folds
from strategies import get_strategy_class

GIB = 2**30
# issue 29's L: 100k items, 1M shoppers, 10M events; the project's 24 GiB machine
L_ITEMS, L_USERS, L_EVENTS = 100_000, 1_000_000, 10_000_000


class Shape:
    """What ``over_budget`` reads of the data: its counts."""

    n_items, n_users = L_ITEMS, L_USERS

    def __len__(self) -> int:
        return L_EVENTS


@pytest.mark.parametrize("name", ["popular", "content", "als", "bpr", "ease", "deep"])
def test_the_defaults_at_L_leave_out_ease_only(name):
    memory = DEFAULT_BUDGET_SHARE * 24 * GIB
    why = over_budget(get_strategy_class(name), Shape(), {}, memory, 600.0)
    if name == "ease":
        assert why is not None and why.startswith("ease: left out: estimated peak memory")
        assert "TRAIN_MEMORY_BUDGET_MB" in why
    else:
        assert why is None, why


def test_the_time_limit_leaves_out_a_fit_predicted_to_take_longer():
    cls = get_strategy_class("ease")
    _, seconds = cls.estimate_cost(L_USERS, L_ITEMS, L_EVENTS)
    why = over_budget(cls, Shape(), {}, None, seconds - 1)
    assert why is not None and "exceeds the fit time limit" in why
    assert "TRAIN_FIT_TIME_LIMIT_S" in why
    assert over_budget(cls, Shape(), {}, None, seconds + 1) is None
    assert over_budget(cls, Shape(), {}, None, None) is None


def test_deep_with_the_full_softmax_at_L_is_predicted_to_take_hours():
    deep = get_strategy_class("deep")
    _, full = deep.estimate_cost(L_USERS, L_ITEMS, L_EVENTS, {"loss": "softmax"})
    mem, auto = deep.estimate_cost(L_USERS, L_ITEMS, L_EVENTS)
    assert full > 3000 and auto < 600 and mem < 3 * GIB
    why = over_budget(deep, Shape(), {"loss": "softmax"}, None, 600.0)
    assert why is not None and why.startswith("deep: left out: estimated ")
    assert " a fit (" in why and "exceeds the fit time limit of 10 min" in why


def _events(n_users: int, n_items: int, n_events: int, seed: int = 0) -> InteractionData:
    rng = np.random.default_rng(seed)
    u = rng.integers(0, n_users, n_events)
    i = rng.integers(0, n_items, n_events)
    return InteractionData.from_arrays(
        [f"u{x}" for x in u],
        [f"i{x}" for x in i],
        event_types=["purchase"] * n_events,
        timestamps=1_700_000_000 + np.arange(n_events),
        all_item_ids=[f"i{x}" for x in range(n_items)],
    )


def test_validation_rows_are_a_seeded_sample_past_max_rows():
    data = _events(3000, 200, 30_000)
    folds = validation_folds(data, "time", 0.2, 42, folds=2)
    every = Validation(folds, k=10, metric="ndcg")
    some = Validation(folds, k=10, metric="ndcg", max_rows=500, seed=1)
    again = Validation(folds, k=10, metric="ndcg", max_rows=500, seed=1)
    assert len(every) > 1000 and len(some) == 500
    np.testing.assert_array_equal(some.users, again.users)
    for f in range(2):  # an equal share of each fold, from that fold's rows
        rows = some.rows_of(f)
        assert len(rows) == 250
        assert set(some.users[rows]) <= set(every.users[every.rows_of(f)])


def test_tune_leaves_out_a_strategy_whose_fits_exceed_its_budget(monkeypatch):
    from recsys.offline.tuning.options import TuneOptions
    from recsys.offline.tuning.search import Tuner

    data = _events(400, 60, 4000)
    tuner = Tuner(data, TuneOptions(budget_s=100.0, strategies=["popular", "als", "ease"]))
    tuner._prepare()
    ease = get_strategy_class("ease")
    monkeypatch.setattr(ease, "estimate_cost", classmethod(lambda cls, u, i, e, p=None: (0, 40)))
    kept = tuner._fit_plan(["popular", "als", "ease"])
    # EASE: 40 s a fit, one per fold and the refit: >= 80 s of the 100 s with ALS's fits
    assert "ease" not in kept and "popular" in kept and "als" in kept
    assert "ease" in tuner.trace["left_out"]
    assert tuner.clock.budget_s < 100.0  # the refits' estimate is kept out of the search


class FixedClock:
    """A budget clock that never moves: ``left`` seconds left, whatever runs."""

    def __init__(self, left: float):
        self._left = left

    def elapsed(self) -> float:
        return 0.0

    def left(self) -> float:
        return self._left

    def tick(self, desc=None) -> None:
        pass


def test_fit_rate_counts_fits_past_its_floor_only():
    from recsys.offline.tuning.hyper import FitRate

    rate = FitRate()
    assert rate.factor == 1.0
    rate.add(0.2, 5.0)  # a fit estimated under a second: overheads, not counted
    assert rate.factor == 1.0
    rate.add(10.0, 30.0)
    rate.add(20.0, 60.0)
    assert rate.factor == pytest.approx(3.0)
    rate.add_scoring(4.0)
    rate.add_scoring(6.0)
    assert rate.score_s == pytest.approx(5.0)
    assert rate.trial_s(10.0) == pytest.approx(35.0)  # 10 s of fits at 3x, 5 s of scoring


def test_tune_leaves_out_a_strategy_whose_default_fits_exceed_the_time_left():
    from recsys.offline.tuning.hyper import search_params
    from recsys.offline.tuning.options import TuneOptions
    from recsys.offline.tuning.search import Tuner

    data = _events(400, 60, 4000)
    opts = TuneOptions(budget_s=100.0, tune_params=False)
    tuner = Tuner(data, opts)
    tuner._prepare()
    settled: list = []
    tuned = search_params(
        ["ease", "als", "popular"],
        tuner.val,
        tuner.halves,
        tuner.stats,
        opts,
        FixedClock(left=50.0),
        tuner.studies,
        share=1.0,
        max_trials=1,
        # popular is never left out, even over the time left
        estimates={"popular": 80.0, "als": 0.5, "ease": 60.0},
        settle=lambda left_out, rate, score_s: settled.append(sorted(left_out)),
    )
    assert settled == [["ease"]]  # once, after the defaults
    assert set(tuned.params) == {"popular", "als"}
    assert set(tuned.left_out) == {"ease"}
    assert tuned.left_out["ease"].startswith("ease: left out: its default trials would take ~")
    assert "50 s left" in tuned.left_out["ease"]
    # Routes given to evaluate need their strategies: those are never left out.
    routes = [{"name": "all", "max_history": None, "weights": {"ease": 1.0}}]
    given = search_params(
        ["ease", "popular"],
        tuner.val,
        tuner.halves,
        tuner.stats,
        TuneOptions(budget_s=100.0, tune_params=False, routes=routes),
        FixedClock(left=50.0),
        tuner.studies,
        share=1.0,
        max_trials=1,
        estimates={"popular": 80.0, "ease": 60.0},
    )
    assert set(given.params) == {"popular", "ease"} and not given.left_out


def test_tune_keeps_the_refits_at_the_measured_rate_and_the_ranker_off_the_search():
    from recsys.offline.tuning.options import TuneOptions
    from recsys.offline.tuning.search import Tuner

    data = _events(400, 60, 4000)
    tuner = Tuner(data, TuneOptions(budget_s=1000.0, ranker=True))
    tuner._prepare()
    tuner.fold_s = {"popular": 1.0, "als": 10.0, "bpr": 20.0}
    tuner.refit_s = {"popular": 1.0, "als": 10.0, "bpr": 20.0}
    tuner.reserve_s = 31.0 + 100.0  # the plan's: every refit and the ranker's 10%
    tuner.clock.budget_s = 1000.0 - tuner.reserve_s
    # bpr left out after the defaults, which ran at 3x the estimates
    tuner._after_defaults({"bpr": "bpr: left out: ..."}, rate=3.0, score_s=5.0)
    # refits at 3x, the ranker's 10%, the guard: two trials' scoring for each of 2 strategies
    assert tuner.reserve_s == pytest.approx(3.0 * 11.0 + 100.0 + 20.0)
    assert tuner.clock.budget_s == pytest.approx(1000.0 - 153.0)
    assert tuner.trace["left_out"]["bpr"] and tuner.trace["fit_rate"] == 3.0
