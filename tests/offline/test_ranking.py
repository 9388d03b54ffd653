"""The learned second stage (recsys.core.ranker, recsys.offline.tuning.ranking): it learns an
order no single strategy sees, its features never see events after the cut, the guard keeps
the blend when it is worse, and a tampered artifact is refused."""

from __future__ import annotations

import os

import numpy as np
import pytest

from features.interactions import InteractionData
from recsys.core.config import ServingConfig
from recsys.core.ranker import ItemStats, Ranker, feature_names
from recsys.core.recommender import Recommender
from recsys.core.stages import USER, Batch
from recsys.core.types import RecRequest
from recsys.models.profile import ServingProfile
from recsys.offline.tuning import ranking
from recsys.offline.tuning.folds import Validation, validation_folds
from recsys.offline.tuning.hyper import candidates, loaded
from recsys.offline.tuning.routes import single_routes

OLD, NEW = 30, 8
CUT = 9500


def recency_data(seed: int = 0, future_items: dict | None = None) -> InteractionData:
    """Old items sold all along, most to heavy users; new items launched shortly before the
    cut with a few sales. After the cut, light users (one past item) buy new items and heavy
    users (eight past items) buy old popular ones. All-time popularity, the only strategy,
    ranks the new items last for everyone: the right order depends on the user's history
    length and the item's age, which no strategy sees. ``future_items`` replaces the items
    bought after the cut (by user), for the leakage test."""
    rng = np.random.default_rng(seed)
    users, items, ts = [], [], []
    p_old = np.linspace(3, 1, OLD) / np.linspace(3, 1, OLD).sum()

    def add(u, i, t):
        users.append(f"u{u}")
        items.append(i)
        ts.append(int(t))

    for u in range(300):  # heavy
        for i in rng.choice(OLD, 8, replace=False, p=p_old):
            add(u, f"o{i}", rng.integers(0, 9000))
    for u in range(300, 600):  # light
        add(u, f"o{rng.integers(OLD)}", rng.integers(0, 9000))
    for u in range(600, 640):  # the launch: a few sales of each new item before the cut
        for i in rng.choice(NEW, 2, replace=False):
            add(u, f"n{i}", rng.integers(9000, CUT))
    for u in range(600):
        if u < 300:
            mine = {i for uu, i in zip(users, items, strict=True) if uu == f"u{u}"}
            pool = [f"o{i}" for i in np.argsort(-p_old) if f"o{i}" not in mine][:6]
            bought = rng.choice(pool, 2, replace=False)
        else:
            bought = [f"n{i}" for i in rng.choice(NEW, 2, replace=False)]
        for i in (future_items or {}).get(u, bought):
            add(u, str(i), rng.integers(CUT + 1, 10000))
    ids = [f"o{i}" for i in range(OLD)] + [f"n{i}" for i in range(NEW)]
    return InteractionData.from_arrays(users, items, "purchase", timestamps=ts, all_item_ids=ids)


def _setup(data: InteractionData):
    share = float((data.ts > CUT).mean())
    folds = validation_folds(data, "time", fraction=share, folds=1)
    val = Validation(folds, 10, "ndcg")
    models = [loaded("popular", m, t) for m, t in zip(_fit(val), val.trains, strict=True)]
    cands = {"popular": candidates("popular", [m.model for m in models], val)}
    halves = np.random.default_rng(0).integers(0, 2, size=data.n_users)[val.users]
    overrides = ServingProfile(routes=single_routes("popular")).serving_overrides()
    return val, cands, halves, overrides, models


def _fit(val):
    from strategies import get_strategy_class

    return [get_strategy_class("popular")(half_life_days=None).fit(t) for t in val.trains]


@pytest.fixture(scope="module")
def recency():
    data = recency_data()
    val, cands, halves, overrides, models = _setup(data)
    ranker, report = ranking.fit_ranker(val, cands, overrides, halves, data)
    return data, val, models, overrides, ranker, report


def test_the_ranker_learns_an_order_no_strategy_sees_and_the_blend_cannot(recency):
    data, val, models, overrides, ranker, report = recency
    oof = report["out_of_fold"]
    # Out of fold (each half ranked by a model trained on the other): far above the blend,
    # whose single strategy gives every user the same order.
    assert report["kept"] and ranker is not None
    assert oof["ranked"] > oof["blend"] + 0.2, oof
    top = list(ranker.gains())[:4]
    user = {"hist_items", "hist_events", "user_span_days", "user_idle_days"}
    assert user & set(top) and any(
        f in top for f in ("item_age_days", "pop_short", "pop_mid", "trend", "pop_all")
    ), top
    # Served through the Recommender: the light user gets new items, the heavy one old ones.
    rec = Recommender(
        models={"popular": models[0]}.get,
        config=ServingConfig.default().with_overrides(overrides),
        ranker=ranker,
    )
    light = next(h for h in val.histories if len(h) == 1)
    heavy = next(h for h in val.histories if len(h) == 8)
    got_light = [it.item_id for it in rec.recommend(light, RecRequest(n=2)).items]
    got_heavy = [it.item_id for it in rec.recommend(heavy, RecRequest(n=2)).items]
    assert all(i.startswith("n") for i in got_light), got_light
    assert all(i.startswith("o") for i in got_heavy), got_heavy
    plain = Recommender(
        models={"popular": models[0]}.get,
        config=ServingConfig.default().with_overrides(overrides),
    )
    assert all(i.startswith("o") for i in [it.item_id for it in plain.recommend(light).items[:2]])


def test_explain_gives_each_items_feature_contributions(recency):
    data, val, models, overrides, ranker, _ = recency
    rec = Recommender(
        models={"popular": models[0]}.get,
        config=ServingConfig.default().with_overrides(overrides),
        ranker=ranker,
    )
    light = next(h for h in val.histories if len(h) == 1)
    res = rec.recommend(light, RecRequest(n=3, explain=True))
    body = res.to_dict(explain=True)
    feats = body["items"][0]["features"]
    assert "bias" in feats and set(feats) - {"bias"} <= set(ranker.features)
    # Every feature's contribution and the bias sum to the item's score (SHAP values).
    b = rec.run_stages(Batch(USER, [light], [RecRequest(n=3)]))
    first = body["items"][0]
    full = ranker.explain(b.per[0], b.blended[0], light, [first["item_id"]], top=999)
    assert sum(full[first["item_id"]].values()) == pytest.approx(first["score"], abs=1e-4)
    assert "features" not in rec.recommend(light, RecRequest(n=3)).to_dict(True)["items"][0]


def test_features_never_see_events_after_the_cut():
    """The same data with every post-cut purchase replaced by other items: the validation
    rows' features (item counts of the fold's training part, the users' histories there) are
    identical, and ItemStats of the whole data as of the cut equal those of the training part."""
    data = recency_data()
    rng = np.random.default_rng(7)
    other = {u: [f"o{i}" for i in rng.choice(OLD, 3, replace=False)] for u in range(600)}
    changed = recency_data(future_items=other)
    xs = []
    for d in (data, changed):
        val, cands, _, overrides, _ = _setup(d)
        cfg = ServingConfig.default().with_overrides(overrides)
        rec = Recommender(models=lambda _n: None, config=cfg)
        rk = [Ranker(None, ["popular"], ItemStats.of(t), 100, True) for t in val.trains]
        assert all(t.ts.max() <= CUT for t in val.trains)
        groups = ranking.build_groups(val, cands, ["popular"], rec, rk)
        xs.append((np.concatenate([g.rows for g in groups]), np.concatenate([g.x for g in groups])))
    assert np.array_equal(xs[0][0], xs[1][0])
    assert np.array_equal(xs[0][1], xs[1][1], equal_nan=True)
    # As-of counting: the whole (changed) data cut at CUT counts exactly the training part.
    full, part = ItemStats.of(changed, as_of=CUT), ItemStats.of(changed.subset(changed.ts <= CUT))
    for name in ("pop", "users", "first_ts", "last_ts"):
        assert np.array_equal(getattr(full, name), getattr(part, name), equal_nan=True), name


def test_the_guard_keeps_the_blend_when_the_ranker_is_worse(monkeypatch):
    """A ranker trained on inverted labels ranks the bought items last: out of fold it is
    worse than the blend, and fit_ranker returns no ranker."""
    data = recency_data(seed=1)
    val, cands, halves, overrides, _ = _setup(data)
    build = ranking.build_groups

    def inverted(*args, **kw):
        groups = build(*args, **kw)
        for g in groups:
            g.y = 1.0 - g.y
        return groups

    monkeypatch.setattr(ranking, "build_groups", inverted)
    ranker, report = ranking.fit_ranker(val, cands, overrides, halves, data)
    assert ranker is None and not report["kept"] and report["served_routes"] == []
    (route,) = report["routes"].values()
    assert route["ranked"] < route["blend"]


def test_feature_names_are_per_generator_then_shared():
    names = feature_names(["ease", "popular"])
    assert names[:4] == ["score:ease", "rank:ease", "score:popular", "rank:popular"]
    assert len(names) == len(set(names))


@pytest.mark.postgres
def test_a_tampered_ranker_artifact_is_refused(make_app, recency):
    from recsys.errors import ModelError
    from recsys.models.repository import get_repository

    data, _, _, _, ranker, _ = recency
    app = make_app()
    repo = get_repository(app)
    with app.app_context():
        good = repo.save_version(ranker, data, {"ndcg@10": 0.5}, activate=True)
        bad = repo.save_version(ranker, data, {"ndcg@10": 0.5})
        lm = repo.load_version("ranker", good)
        assert isinstance(lm.model, Ranker) and lm.model.features == ranker.features
        path = os.path.join(repo.version_path("ranker", bad), "ranker.txt")
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:  # a quiet edit of one leaf value
            f.write(text.replace("leaf_value=", "leaf_value=9", 1))
        with pytest.raises(ModelError, match="modified"):
            repo.load_version("ranker", bad)
        with pytest.raises(ModelError, match="modified"):
            repo.activate("ranker", bad)
        assert repo.active_version("ranker") == good
        repo.activate("ranker", good)
        assert repo.rollback_target("ranker") is None or repo.active_version("ranker") == good


def _any_ranker(data, generators):
    """A ranker over ``data``'s items with a small booster trained on random features: the
    plumbing of serving, explaining, activating and rolling back, not its quality."""
    import lightgbm as lgb

    names = feature_names(generators)
    rng = np.random.default_rng(0)
    x = rng.random((400, len(names)))
    y = (x[:, 0] > 0.7).astype(float)
    params = {**ranking.booster_params(10, 0, threads=1), "min_data_in_leaf": 5}
    booster = lgb.train(params, lgb.Dataset(x, y, group=[20] * 20), 10)
    return Ranker(booster, generators, ItemStats.of(data), 50, False)


@pytest.mark.postgres
def test_served_ranker_explains_in_the_api_and_the_inspector_and_rolls_back(served_app):
    from recsys.models.repository import get_repository
    from recsys.store import get_engine
    from recsys.store.training_data import load_interactions
    from tests.servicekit import ADMIN_TOKEN

    client = served_app.test_client()
    hdr = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    plain = client.get("/v1/users/u6/recommendations?explain=true").get_json()
    assert all("features" not in it for it in plain["items"])
    repo = get_repository(served_app)
    with served_app.app_context():
        data = load_interactions(get_engine())
        v1 = repo.save_version(_any_ranker(data, ["ease", "popular"]), data, {})
        v2 = repo.save_version(_any_ranker(data, ["popular"]), data, {})
    for v in (v1, v2):  # activated like a model: the cached lists go stale
        r = client.post("/v1/admin/models/ranker/activate", json={"version": v}, headers=hdr)
        assert r.status_code == 200, r.get_json()
    body = client.get("/v1/users/u6/recommendations?explain=true").get_json()
    assert body["cached"] is False and body["model_versions"].get("ranker") == v2
    feats = body["items"][0]["features"]
    assert "bias" in feats and set(feats) - {"bias"} <= set(feature_names(["popular"]))
    html = client.get("/admin/ui/user?user_id=u6", headers=hdr).get_data(as_text=True)
    assert 'class="ranker-features"' in html and "bias" in html
    r = client.post("/v1/admin/models/ranker/rollback", headers=hdr)
    assert r.status_code == 200, r.get_json()
    body = client.get("/v1/users/u6/recommendations?explain=true").get_json()
    assert body["cached"] is False and body["model_versions"].get("ranker") == v1
    assert "features" in body["items"][0]


def test_ranked_is_the_tuned_configuration_with_the_ranker():
    from recsys.offline.evaluation.configs import load_config

    cfg = load_config("ranked")
    assert cfg.tune and cfg.rank and cfg.ranker is None
    assert "ranker" in cfg.to_dict() and "ranker" not in load_config("tuned").to_dict()


def test_a_training_stops_at_its_deadline_and_keeps_its_rounds():
    import math

    from recsys.offline.tuning.ranking import Group, _train, booster_params, stop_at

    rng = np.random.default_rng(0)
    groups = []
    for r in range(40):
        x = rng.normal(size=(30, 3)).astype(np.float32)
        y = (x[:, 0] > 0.8).astype(np.float32)
        groups.append(Group(r, "all", np.arange(30), x, y, None, None))
    params = {**booster_params(10, 0), "min_data_in_leaf": 5}
    stopped: list[int] = []
    past = _train(groups, params, 50, callbacks=[stop_at(-math.inf, stopped)])
    assert past.current_iteration() == 1 and stopped == [1]  # stops after its first round
    never: list[int] = []
    full = _train(groups, params, 50, callbacks=[stop_at(math.inf, never)])
    assert full.current_iteration() == 50 and never == []
    with_valid = _train(groups[:30], params, 50, groups[30:], [stop_at(-math.inf, stopped)])
    assert with_valid.current_iteration() == 1 and stopped == [1, 1]
