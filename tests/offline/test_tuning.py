"""Self-tuning (recsys.offline.tuning): the search finds per-bucket winners, the guard falls back,
profiles are checksummed, activated atomically, rolled back, and served."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from features.interactions import InteractionData
from recsys.core.config import ServingConfig
from recsys.core.recommender import Recommender
from recsys.core.types import RecRequest, UserHistory
from recsys.offline.tuning.options import TuneOptions
from recsys.offline.tuning.routes import serve_newcomers, single_routes
from recsys.offline.tuning.search import tune
from recsys.offline.tuning.spaces import SPACES

STRATEGIES = ["popular", "ease"]


def two_bucket_data(seed: int = 0, newcomers: int = 0) -> tuple[InteractionData, float]:
    """Light users (one past item) go on to buy popular items; heavy users (eleven past items,
    eight from one cluster) go on to buy the two cluster items they lack. So popularity is
    clearly best for short histories and item-item collaborative filtering for long ones.
    Returns the data and the share of events in the "future" window (the validation slice)."""
    rng = np.random.default_rng(seed)
    popular = list(range(10))
    clusters = [list(range(10 + 10 * c, 20 + 10 * c)) for c in range(11)]
    users, items, ts = [], [], []
    future = 0

    def add(u, i, t):
        users.append(f"u{u}")
        items.append(f"i{i}")
        ts.append(t)

    for u in range(400):  # light
        add(u, int(rng.choice(clusters[u % 11])), int(rng.integers(0, 1000)))
        for i in rng.choice(popular, 2, replace=False, p=np.linspace(2, 1, 10) / 15):
            add(u, int(i), int(rng.integers(2000, 3000)))
            future += 1
    for u in range(400, 600):  # heavy
        cl = rng.permutation(clusters[u % 11])
        for i in cl[:8]:
            add(u, int(i), int(rng.integers(0, 1000)))
        for i in rng.choice(popular, 3, replace=False):
            add(u, int(i), int(rng.integers(0, 1000)))
        for i in cl[8:]:
            add(u, int(i), int(rng.integers(2000, 3000)))
            future += 1
    for u in range(600, 600 + newcomers):  # every event in the future: an empty history
        for i in rng.choice(popular, 2, replace=False):
            add(u, int(i), int(rng.integers(2000, 3000)))
            future += 1
    data = InteractionData.from_arrays(users, items, "purchase", timestamps=ts)
    return data, future / len(users)


def _opts(**kw) -> TuneOptions:
    base = dict(
        budget_s=600.0, max_trials=8, fraction=0.0, strategies=STRATEGIES, tune_params=False
    )
    base.update(kw)
    return TuneOptions(**base)


@pytest.fixture(scope="module")
def synthetic():
    return two_bucket_data()


@pytest.fixture(scope="module")
def tuned(synthetic):
    data, share = synthetic
    return tune(data, _opts(fraction=share))


def _top(route: dict) -> str:
    return max(route["weights"], key=lambda s: route["weights"][s])


def test_tuner_finds_each_buckets_winner(tuned):
    cfg = ServingConfig.default().with_overrides(tuned.serving_overrides())
    short, long_ = cfg.route_for(1), cfg.route_for(11)
    assert short != long_, tuned.routes  # a cut point between the two groups was learned
    by_name = {r["name"]: r for r in tuned.routes}
    assert _top(by_name[short]) == "popular"
    assert _top(by_name[long_]) == "ease"
    assert (
        by_name[long_]["weights"].get("popular", 0)
        < by_name[long_]["weights"][_top(by_name[long_])]
    )
    assert tuned.guard["verdict"] == "passed"
    # The profile is at least as good as every single strategy on the validation slice.
    means = tuned.guard["means"]
    assert all(means["profile"] >= means[s] for s in STRATEGIES)
    assert means["profile"] > max(means[s] for s in STRATEGIES) + 0.05  # and clearly better
    # The trace can be inspected: per-bucket studies with their trials.
    per_bin = tuned.trace["routes"]["per_bin"]
    assert len(per_bin) >= 2 and all("means" in b and "choice" in b for b in per_bin.values())


def test_guard_falls_back_when_the_blend_is_worse(synthetic):
    data, share = synthetic
    # Given routes (not searched) that send each group to the strategy that fails it.
    bad = [
        {"name": "short", "max_history": 3, "weights": {"ease": 1.0}},
        {"name": "long", "max_history": None, "weights": {"popular": 1.0}},
    ]
    profile = tune(data, _opts(fraction=share, routes=bad))
    assert profile.guard["verdict"] == "failed"
    assert profile.guard["fallback"] == profile.guard["best_single"]
    assert profile.routes == single_routes(profile.guard["best_single"])
    assert "worse than" in profile.guard["reason"]


def test_strategy_hyperparameters_are_searched_from_the_defaults(synthetic):
    data, share = synthetic
    profile = tune(data, _opts(fraction=share, tune_params=True, max_trials=3))
    trace = profile.trace["params"]["ease"]
    assert trace["trials"] >= 2
    first = trace["history"][0]
    assert first["params"] == {"l2": 500.0}  # the shipped default is trial 0
    assert trace["best_value"] >= trace["first_value"]
    assert set(profile.params) <= set(STRATEGIES)


def test_a_strategy_without_a_declared_space_is_fitted_once(synthetic, monkeypatch):
    """A strategy the tuner has no space for (the opt-in sequence model, minutes per fit) is
    scored with its defaults once: further trials would only repeat that fit."""
    from recsys.offline.tuning import spaces

    monkeypatch.setattr(spaces, "SEARCHED", ("popular",))
    data, share = synthetic
    profile = tune(data, _opts(fraction=share, tune_params=True, max_trials=3))
    trace = profile.trace["params"]
    assert trace["ease"]["trials"] == 1
    assert trace["ease"]["history"][0]["params"] == {"l2": 500.0}
    assert trace["popular"]["trials"] >= 3  # the searched one still is
    # ... and only a search is judged against the defaults (one trial has nothing to judge)
    assert "vs_defaults" in trace["popular"] and "vs_defaults" not in trace["ease"]


def test_empty_histories_never_reach_a_strategy_that_cannot_score_them():
    cfg = ServingConfig.default().with_overrides(
        {
            "routing": {
                "routes": [{"name": "all", "max_history": None, "weights": {"ease": 1.0}}],
            }
        }
    )
    rec = Recommender(models=lambda _n: None, config=cfg)
    assert rec.strategies_for("all", UserHistory("new")) == []
    assert rec.strategies_for("all", UserHistory.from_items("u", ["i1"])) == ["ease"]
    bpr = cfg.with_overrides({"routing": {"routes": [{"name": "a", "weights": {"bpr": 1.0}}]}})
    # BPR declares it can (item biases): it is asked.
    assert Recommender(models=lambda _n: None, config=bpr).strategies_for(
        "a", UserHistory("new")
    ) == ["bpr"]


def test_served_routes_and_fallback_through_the_request_path():
    from tests.servicekit import fitted_models

    models = fitted_models()
    cfg = ServingConfig.default().with_overrides(
        {
            "routing": {
                "routes": [
                    {"name": "h0-1", "max_history": 1, "weights": {"popular": 1.0}},
                    {"name": "h2+", "max_history": None, "weights": {"ease": 1.0}},
                ]
            },
            "profile": "20261204T000000Z",
        }
    )
    rec = Recommender(models=models.get, config=cfg)
    short = rec.recommend(UserHistory.from_items("a", ["i5"], "purchase"), RecRequest(n=3))
    long_ = rec.recommend(UserHistory.from_items("b", ["i0", "i2"], "purchase"), RecRequest(n=3))
    assert short.route == "h0-1" and long_.route == "h2+"
    assert long_.items[0].item_id == "i1"  # co-occurrence with i0 + i2
    assert set(long_.items[0].sources) == {"ease"}
    assert long_.to_dict(explain=True)["profile"] == "20261204T000000Z"
    # An empty history on the EASE-only route falls back to popularity, ranked on its own.
    cfg2 = cfg.with_overrides({"routing": {"routes": [{"name": "x", "weights": {"ease": 1.0}}]}})
    empty = Recommender(models=models.get, config=cfg2).recommend(UserHistory("new"))
    assert empty.degraded and empty.items[0].item_id == "i0"  # the most popular item


@pytest.mark.parametrize(
    "routes, message",
    [
        ([{"name": "a", "max_history": 3, "weights": {}}], "must be null"),
        ([{"name": "a", "max_history": None, "weights": {"nope": 1}}], "unknown strategy"),
        (
            [
                {"name": "a", "max_history": 3, "weights": {}},
                {"name": "a", "max_history": None, "weights": {}},
            ],
            "used twice",
        ),
        (
            [
                {"name": "a", "max_history": 3, "weights": {}},
                {"name": "b", "max_history": 2, "weights": {}},
                {"name": "c", "max_history": None, "weights": {}},
            ],
            "increasing",
        ),
        ([{"name": "a b", "max_history": None, "weights": {}}], "name"),
        ([{"name": "a", "max_history": None, "weights": {"ease": -1}}], "0..1000"),
    ],
)
def test_bad_routes_are_refused_with_the_reason(routes, message):
    with pytest.raises(ValueError, match=message):
        ServingConfig.default().with_overrides({"routing": {"routes": routes}})


# -- the repository side: store, tamper, activate, roll back, serve ---------------------------
def _store_profile(app, routes, models=None):
    from recsys.models.profile import ServingProfile, save_profile
    from recsys.models.repository import get_repository

    profile = ServingProfile(
        routes=routes,
        params={},
        validation={"overall": {"ndcg@10": 0.5}},
        guard={"verdict": "passed", "reason": "test"},
        models=models or {},
    )
    with app.app_context():
        return save_profile(get_repository(app), profile)


@pytest.mark.postgres
def test_tampered_profile_is_refused_and_the_old_one_keeps_serving(make_app):
    from recsys.errors import ModelError
    from recsys.models.profile import activate_profile, load_profile
    from recsys.models.repository import PROFILE_KIND, get_repository
    from recsys.serving.settings_store import get_settings

    app = make_app()
    good = _store_profile(app, single_routes("popular"))
    bad = _store_profile(app, single_routes("ease"))
    repo = get_repository(app)
    with app.app_context():
        activate_profile(repo, good)
        path = os.path.join(repo.version_path(PROFILE_KIND, bad), "profile.json")
        with open(path) as f:
            raw = json.load(f)
        raw["routes"][0]["weights"] = {"als": 1.0}  # a quiet edit of the weights
        with open(path, "w") as f:
            json.dump(raw, f)
        with pytest.raises(ModelError, match="modified"):
            load_profile(repo, bad)
        with pytest.raises(ModelError, match="modified"):
            activate_profile(repo, bad)
        assert repo.active_version(PROFILE_KIND) == good
        cfg = get_settings(app).config()
        assert cfg.profile == good and [r.name for r in cfg.routes] == ["all"]


@pytest.mark.postgres
def test_profile_activation_bumps_config_and_rolls_back(make_app):
    from recsys.models.profile import activate_profile, deactivate_profile, rollback_profile
    from recsys.models.repository import PROFILE_KIND, get_repository
    from recsys.serving.settings_store import get_settings

    app = make_app(CONFIG_POLL_SECONDS=0)
    first = _store_profile(app, single_routes("popular"))
    second = _store_profile(app, single_routes("ease"))
    repo = get_repository(app)
    with app.app_context():
        settings = get_settings(app)
        v0 = settings.versions(force=True).config
        assert settings.config().routes == ()  # no profile: cold/warm
        activate_profile(repo, first)
        v1 = settings.versions(force=True).config
        assert v1 > v0 and settings.config().profile == first
        activate_profile(repo, second)
        assert settings.config().profile == second
        assert [r.name for r in settings.config().routes] == ["h0", "h1+"]
        assert rollback_profile(repo) == first
        assert settings.config().profile == first
        assert repo.active_version(PROFILE_KIND) == first
        # The runtime never tries to load a profile as a model.
        assert PROFILE_KIND not in repo.active_versions(models_only=True)
        assert deactivate_profile(repo) == first
        assert settings.config().routes == () and settings.config().profile is None


@pytest.mark.postgres
def test_admin_overrides_still_apply_on_top_of_a_profile(make_app):
    from recsys.models.profile import activate_profile
    from recsys.models.repository import get_repository
    from recsys.serving.settings_store import get_settings

    app = make_app(CONFIG_POLL_SECONDS=0)
    routes = [{"name": "all", "max_history": None, "weights": {"ease": 1.0, "popular": 0.5}}]
    version = _store_profile(app, routes)
    with app.app_context():
        activate_profile(get_repository(app), version)
        settings = get_settings(app)
        settings.update_strategies({"popular": {"weight": 0.5}}, actor="test")
        cfg = settings.config()
        assert cfg.route_weight("all", "popular") == pytest.approx(0.25)
        settings.update_strategies({"ease": {"enabled": False}}, actor="test")
        assert get_settings(app).config().route_strategies("all") == ["popular"]


@pytest.mark.postgres
@pytest.mark.redis
def test_served_api_names_the_profile_and_its_route(served_app):
    from recsys.models.profile import activate_profile, rollback_profile
    from recsys.models.repository import get_repository
    from tests.servicekit import ADMIN_TOKEN

    client = served_app.test_client()
    before = client.get("/v1/users/u0/recommendations?explain=true").get_json()
    assert before["route"] in ("cold", "warm") and before["profile"] is None
    routes = [
        {"name": "short", "max_history": 2, "weights": {"popular": 1.0}},
        {"name": "long", "max_history": None, "weights": {"ease": 1.0}},
    ]
    v1 = _store_profile(served_app, routes)
    hdr = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    r = client.post("/v1/admin/models/profile/activate", json={"version": v1}, headers=hdr)
    assert r.status_code == 200, r.get_json()
    after = client.get("/v1/users/u0/recommendations?explain=true").get_json()
    assert after["cached"] is False  # the activation made the cached list stale
    assert after["route"] == "long" and after["profile"] == v1  # u0 bought 3 items
    assert all(set(it["sources"]) == {"ease"} for it in after["items"])
    active = client.get("/v1/admin/models/profile/active", headers=hdr).get_json()
    assert active["version"] == v1 and active["routes"][1]["name"] == "long"
    with served_app.app_context():
        v2 = _store_profile(served_app, single_routes("popular"))
        activate_profile(get_repository(served_app), v2)
        assert rollback_profile(get_repository(served_app)) == v1
    r = client.post("/v1/admin/models/profile/rollback", headers=hdr)
    assert r.status_code == 409  # nothing before v1


@pytest.mark.postgres
def test_recsys_tune_cli_activates_and_a_failed_retune_keeps_the_profile(make_app, tmp_path):
    from recsys.cli.main import main
    from recsys.models.repository import PROFILE_KIND, get_repository

    app = make_app(EVENTS_MAX_NEW_ITEMS=1000)  # the items come with the first events
    client = app.test_client()
    data, _ = two_bucket_data()
    users = data.users.ids[data.user_idx]
    items = data.items.ids[data.item_idx]
    t0 = 1_700_000_000
    events = [
        {"user_id": str(u), "item_id": str(i), "type": "purchase", "timestamp": t0 + 60 * int(t)}
        for u, i, t in zip(users, items, data.ts, strict=True)
    ]
    for start in range(0, len(events), 1000):
        r = client.post("/v1/events", json=events[start : start + 1000])
        assert r.status_code == 201, r.get_json()
    runner = app.test_cli_runner()
    res = runner.invoke(
        main,
        args=["tune", "--budget", "60s", "--trials", "2", "--strategies", "popular,ease",
              "--tune-holdout", "0.32", "--quiet"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    repo = get_repository(app)
    with app.app_context():
        version = repo.active_version(PROFILE_KIND)
        assert version is not None and f"profile {version}: active" in res.output
        listed = runner.invoke(main, args=["models", "list", "profile"])
        assert version in listed.output
        shown = runner.invoke(main, args=["profile", "show", "--json"])
        assert json.loads(shown.output)["version"] == version
        # A re-tune whose guard fails (routes that serve everyone badly) leaves it active.
        bad = tmp_path / "bad.json"
        inverted = [
            {"name": "short", "max_history": 3, "weights": {"ease": 1.0}},
            {"name": "long", "max_history": None, "weights": {"popular": 1.0}},
        ]
        bad.write_text(json.dumps(inverted))
        res2 = runner.invoke(
            main,
            args=["tune", "--budget", "30s", "--trials", "1", "--strategies", "popular,ease",
                  "--routes", str(bad), "--quiet"]
        )  # fmt: skip
        assert res2.exit_code == 0, res2.output
        assert repo.active_version(PROFILE_KIND) == version
        assert "stays active" in res2.output
    trained = runner.invoke(
        main,
        args=["train", "popular", "ease", "--holdout", "0", "--tune", "--tune-budget", "10s",
              "--quiet"],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    assert "tuning the serving profile" in trained.output and "profile 2" in trained.output
    bad_budget = runner.invoke(main, args=["tune", "--budget", "soon"])
    assert bad_budget.exit_code == 2 and "budget" in bad_budget.output
    typo = runner.invoke(main, args=["tune", "--strategies", "popular,als,esae"])
    assert typo.exit_code == 2 and "unknown strategies 'esae'" in typo.output


def test_evaluate_tuned_sees_the_training_part_only(synthetic):
    from recsys.offline.evaluation.runner import evaluate
    from recsys.offline.tuning.search import tune_config

    data, _ = synthetic
    report = evaluate(
        ["popular", "ease", "tuned"],
        data,
        split="time",
        k=10,
        resamples=200,
        tune_budget=60.0,
        tune_options={"strategies": STRATEGIES, "max_trials": 4},
        tuner=tune_config,
    )
    tuned = report["configs"]["tuned"]
    # The search saw the training part only, its validation slice cut as the test was.
    assert tuned["profile"]["data"]["events"] == report["split"]["n_train"]
    assert tuned["profile"]["validation"]["slice"] == "time"
    best_single = max(report["configs"][s]["metrics"]["ndcg@10"] for s in ("popular", "ease"))
    assert tuned["metrics"]["ndcg@10"] >= best_single


def _sequences(n_users: int = 30, length: int = 6) -> InteractionData:
    """Each user rates ``length`` distinct items at times 0..length-1 (one event per step)."""
    users, items, ts = [], [], []
    for u in range(n_users):
        for t in range(length):
            users.append(f"u{u}")
            items.append(f"i{(u + 3 * t) % 40}")
            ts.append(t)
    return InteractionData.from_arrays(users, items, "purchase", timestamps=ts)


def test_leave_last_out_folds_are_cut_again_from_the_older_rest():
    from recsys.offline.tuning.folds import Validation, validation_folds

    data = _sequences()
    folds = validation_folds(data, "leave-last-out", folds=3)
    assert len(folds) == 3
    for f, (train, val) in enumerate(folds):
        # Fold f holds out each user's (f+1)-th newest event and trains on the older ones.
        assert len(val) == 30
        assert set(val.ts.tolist()) == {5 - f}
        assert train.ts.max() == 4 - f
    v = Validation(folds, k=5, metric="ndcg")
    assert len(v) == 90 and v.n_folds == 3
    assert [len(h.items) for h in v.histories[:1] + v.histories[30:31] + v.histories[60:61]] == [
        5,
        4,
        3,
    ]
    # Paired tests run per user: three rows of one user become one unit.
    a, b = v.paired(np.arange(90, dtype=float), np.zeros(90))
    assert len(a) == 30 and a[0] == pytest.approx((0 + 30 + 60) / 3)


def test_auto_folds_stop_at_enough_targets_and_time_slices_move_back():
    from recsys.offline.tuning.folds import validation_folds

    data = _sequences()
    assert len(validation_folds(data, "leave-last-out", min_rows=30)) == 1
    assert len(validation_folds(data, "leave-last-out", min_rows=60)) == 2
    assert len(validation_folds(data, "leave-last-out", min_rows=10_000)) == 3
    (t0, v0), (t1, v1) = validation_folds(data, "time", fraction=0.2, folds=2)
    assert v1.ts.max() < v0.ts.min()  # the second slice is older than the first
    assert t1.ts.max() < v1.ts.min()


def test_tuner_scores_every_fold_with_its_own_models():
    from recsys.offline.tuning.search import Tuner

    data = _sequences(n_users=60, length=8)
    tuner = Tuner(data, _opts(validation="leave-last-out", fraction=0.2, folds=2, max_trials=2))
    profile = tuner.run()
    v = profile.validation
    assert v["folds"] == 2 and v["rows"] == 120 and v["users"] == 60
    assert set(profile.guard["means"]) >= {"profile", "popular", "ease"}
    # Each fold's popularity model counted that fold's training part only: fold 1 lacks the
    # events at time 6 (its own targets), which fold 0 trained on.
    pop = [m.model.popularity_ for m in tuner.models["popular"]]
    assert pop[0].sum() > pop[1].sum()


def _two_fold_validation():
    """The validation rows a two-fold leave-last-out tune of 60 users would score."""
    from recsys.offline.tuning.folds import Validation, validation_folds

    folds = validation_folds(_sequences(n_users=60, length=8), "leave-last-out", 0.2, folds=2)
    return Validation(folds, k=10, metric="ndcg")


def test_a_gain_the_newest_fold_does_not_show_is_not_taken():
    """A departure must be significantly better overall *and* at least as good on the newest
    fold (the slice nearest to serving): a gain only the older folds show is drift."""
    from recsys.offline.tuning.guard import beats

    val = _two_fold_validation()
    newest = val.fold_of == 0
    base = np.full(len(val), 0.5)
    drifted = np.where(newest, 0.45, 1.0)  # much better on the older fold, worse on the newest
    verdict, better, _ = beats(base, drifted, val.guard_rows(), "ndcg@10", 0.1, "base", "new")
    assert not better and "newest fold" in verdict
    steady = np.where(newest, 0.55, 1.0)  # better on both
    verdict, better, _ = beats(base, steady, val.guard_rows(), "ndcg@10", 0.1, "base", "new")
    assert better, verdict
    # Restricted to some rows, the newest-fold check looks at those rows only.
    rows = np.flatnonzero(~newest)
    assert beats(base[rows], drifted[rows], val.guard_rows(rows), "ndcg@10", 0.1).better


def test_a_tied_ensemble_is_vetoed_only_by_a_significant_loss_on_the_newest_fold():
    """The ensemble kept for a tie (``guard.not_behind``): at least as good overall, and not
    *significantly* worse on the newest fold; a point-estimate dip there is noise."""
    from recsys.offline.tuning.guard import not_behind

    val = _two_fold_validation()
    rows = val.guard_rows()
    newest = val.fold_of == 0
    rng = np.random.default_rng(3)
    base = rng.random(len(val))
    noise = rng.normal(0.0, 0.2, len(val))
    # Tied: the same on average; on the newest fold a little behind, within its noise.
    for f in (newest, ~newest):
        noise[f] -= noise[f].mean()
    dip = base + noise + np.where(newest, -0.01, 0.01)
    assert dip[newest].mean() < base[newest].mean() and dip.mean() >= base.mean()
    assert not_behind(base, dip, rows, "ndcg@10", 0.1)
    # Far ahead on the older fold, clearly behind on the newest: drift, vetoed.
    drift = base + np.where(newest, -0.3, 0.4)
    assert drift.mean() > base.mean()
    assert not not_behind(base, drift, rows, "ndcg@10", 0.1)
    # Behind overall: never kept.
    assert not not_behind(base, base - 0.01, rows, "ndcg@10", 0.1)


def test_a_bin_of_empty_histories_searches_only_strategies_that_can_score_them():
    # Newcomers (every event in the validation window) arrive with an empty history.
    data, share = two_bucket_data(newcomers=300)
    profile = tune(data, _opts(fraction=share, strategies=["popular", "ease", "bpr"]))
    per_bin = profile.trace["routes"]["per_bin"]
    assert "0" in per_bin, per_bin.keys()  # the newcomers make a bin of their own
    folds = per_bin["0"]["folds"]
    assert folds, per_bin["0"]
    for f in folds:
        # EASE cannot score an empty history: its weight is not searched there.
        assert set(f["weights"]) <= {"popular", "bpr"}, f
        assert not any("ease" in k for k in f["study"]["best_params"]), f
    for route in profile.routes:
        if route["max_history"] == 0:
            assert set(route["weights"]) <= {"popular", "bpr"}, route


def test_routes_never_leave_new_shoppers_to_the_degraded_fallback():
    ease_only = [{"name": "all", "max_history": None, "weights": {"ease": 1.0}, "blend": None}]
    routes = serve_newcomers(ease_only)
    assert routes == single_routes("ease")
    cfg = ServingConfig.default().with_overrides({"routing": {"routes": routes}})
    rec = Recommender(models=lambda _n: None, config=cfg)
    assert rec.strategies_for(cfg.route_for(0), UserHistory("new")) == ["popular"]
    assert rec.strategies_for(cfg.route_for(3), UserHistory.from_items("u", ["i1"])) == ["ease"]
    # A route of empty histories keeps (renormalised) only the weights that can be used there.
    mixed = [
        {"name": "h0", "max_history": 0, "weights": {"ease": 1.0, "bpr": 0.5}, "blend": "rrf"},
        {"name": "h1+", "max_history": None, "weights": {"ease": 1.0}, "blend": None},
    ]
    assert serve_newcomers(mixed)[0]["weights"] == {"bpr": 1.0}
    assert serve_newcomers(mixed)[1:] == mixed[1:]
    # A first route that can already score them is left alone.
    fine = [{"name": "all", "max_history": None, "weights": {"ease": 1.0, "popular": 0.2}}]
    assert serve_newcomers(fine) == fine


@pytest.mark.parametrize("name", sorted(SPACES))
def test_each_space_starts_from_the_strategy_class_defaults(name):
    """Trial 0 of every searched strategy is its shipped default: the space applied to the
    enqueued default values gives exactly the class's own ``__init__`` defaults (a space whose
    defaults drifted from the class would make the tuner's baseline something never served)."""
    import inspect

    import optuna

    from recsys.offline.tuning.spaces import DataStats
    from strategies import get_strategy_class

    space, defaults = SPACES[name]
    stats = DataStats(span_days=365.0, n_users=1000, n_items=500)
    init = inspect.signature(get_strategy_class(name).__init__).parameters
    kwargs = space(optuna.trial.FixedTrial(defaults(stats)[0]), stats)
    assert kwargs, "a declared space must set at least one parameter"
    for key, value in kwargs.items():
        assert key in init, f"{name}: {key!r} is not an __init__ parameter"
        default = init[key].default
        assert (list(default) if isinstance(default, tuple) else default) == value, key
