"""Unit tests of the request path: config, routing, blend math, business rules, paging."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from recsys.core.config import DEFAULT_CONFIG, ServingConfig
from recsys.core.recommender import Recommender
from recsys.core.runners import run_inline
from recsys.core.types import RecRequest, UserHistory, histories_from_data
from recsys.serving.catalog import Catalog
from tests.clocks import ManualClock
from tests.servicekit import CATS, ITEMS, Broken, Loaded, fitted_models, tiny_data

ONLY_EASE_POP = {
    "strategies": {"ease": {"weight": 1.0}, "popular": {"weight": 0.2}},
    "routing": {"cold_threshold": 2, "warm_strategies": ["ease", "popular"]},
}


def catalog(unavailable=()) -> Catalog:
    return Catalog({i: (i not in unavailable, tuple(c)) for i, c in zip(ITEMS, CATS, strict=True)})


def rec(models=None, overrides=None, cat=None, **kw) -> Recommender:
    models = fitted_models() if models is None else models
    cfg = ServingConfig.default().with_overrides(ONLY_EASE_POP).with_overrides(overrides)
    return Recommender(models.get, cfg, cat if cat is not None else catalog(), **kw)


def hist(user, *items, type="purchase"):
    return UserHistory.from_items(user, list(items), type=type)


# -- config ---------------------------------------------------------------------------------
def test_default_config_round_trips():
    cfg = ServingConfig.default()
    assert cfg.to_dict() == DEFAULT_CONFIG
    assert ServingConfig.from_dict(cfg.to_dict()) == cfg


def test_with_overrides_deep_merges_and_leaves_the_rest():
    cfg = ServingConfig.default().with_overrides(
        {"strategies": {"als": {"weight": 0.25}}, "routing": {"blend": "rrf"}}
    )
    assert cfg.weight("als") == 0.25 and cfg.enabled("als")
    assert cfg.weight("ease") == DEFAULT_CONFIG["strategies"]["ease"]["weight"]
    assert cfg.blend == "rrf" and cfg.cold_threshold == 5


@pytest.mark.parametrize(
    "bad, needle",
    [
        ({"strategies": {"nope": {}}}, "unknown strategy"),
        ({"strategies": {"als": {"weight": -1}}}, "weight"),
        ({"strategies": {"als": {"enabled": "yes"}}}, "enabled"),
        ({"strategies": {"als": {"wieght": 1}}}, "unknown keys"),
        ({"routing": {"blend": "max"}}, "blend"),
        ({"routing": {"cold_threshold": -1}}, "cold_threshold"),
        ({"routing": {"cold_threshold": True}}, "cold_threshold"),
        ({"routing": {"max_per_category": 0}}, "max_per_category"),
        ({"routing": {"warm_strategies": ["als", "x"]}}, "warm_strategies"),
        ({"routing": {"seen_types": ["bought"]}}, "seen_types"),
        ({"routing": {"candidates_per_strategy": 0}}, "candidates_per_strategy"),
        ({"routing": {"rrf_k": 0}}, "rrf_k"),
        ({"routing": {"colour": 1}}, "unknown keys"),
        ({"other": {}}, "unknown config keys"),
    ],
)
def test_from_dict_rejects_bad_values(bad, needle):
    with pytest.raises(ValueError, match=needle):
        ServingConfig.from_dict(bad)


# -- routing --------------------------------------------------------------------------------
def test_route_by_distinct_positive_items():
    r = rec()
    assert r.route(UserHistory("x")) == "cold"
    assert r.route(hist("x", "i0", "i0")) == "cold"  # one distinct item
    assert r.route(hist("x", "i0", "i1")) == "warm"
    assert r.route(hist("x", "i0", "i1", type="dislike")) == "cold"


def test_cold_user_without_history_gets_popular_only():
    res = rec().recommend(UserHistory("new"), RecRequest(n=3, explain=True))
    assert res.route == "cold"
    assert [i.item_id for i in res.items][0] == "i0"  # bought by every user
    assert all(set(i.sources) == {"popular"} for i in res.items)
    assert not res.degraded and res.model_versions == {"popular": "p1"}


def test_cold_route_with_history_uses_content_when_loaded():
    models = fitted_models()
    # A second co-occurrence model registered as "content" stands in for the content strategy.
    models["content"] = Loaded("content", "c1", models["ease"].model, models["ease"].items, None)
    r = rec(models, {"routing": {"cold_threshold": 3}})
    res = r.recommend(hist("x", "i2"), RecRequest(n=5))
    assert res.route == "cold"
    assert set(res.model_versions) == {"content", "popular"}
    res = r.recommend(UserHistory("y"), RecRequest(n=5))
    assert set(res.model_versions) == {"popular"}


def test_warm_user_blends_collaborative_and_popular():
    res = rec().recommend(hist("x", "i0", "i2"), RecRequest(n=3, explain=True))
    assert res.route == "warm"
    assert res.items[0].item_id == "i1"  # co-bought with i0 and i2 by u0, u1
    assert set(res.model_versions) == {"ease", "popular"}
    top = res.items[0]
    assert top.sources["ease"] == pytest.approx(1.0)  # min-max: the best ease candidate
    assert top.score == pytest.approx(sum(top.sources.values()))


def test_missing_model_is_skipped_not_degraded():
    models = fitted_models()
    del models["ease"]
    res = rec(models).recommend(hist("x", "i0", "i2"), RecRequest(n=3))
    assert res.skipped == ["ease"] and not res.degraded
    assert set(res.model_versions) == {"popular"}


def test_no_model_at_all_is_degraded_and_empty():
    res = rec({}).recommend(hist("x", "i0", "i2"), RecRequest(n=3))
    assert res.degraded and res.items == []


def test_failing_strategy_is_dropped_and_degraded():
    models = fitted_models()
    m = models["ease"]
    models["ease"] = Loaded("ease", "bad", Broken(), m.items, m.users)
    models["ease"].model.cooc_ = m.model.cooc_
    res = rec(models).recommend(hist("x", "i0", "i2"), RecRequest(n=3))
    assert res.degraded and res.dropped == ["ease"]
    assert [i.item_id for i in res.items]  # popular still serves
    assert "ease" not in res.model_versions


def test_strategy_past_deadline_is_dropped():
    clock = ManualClock()

    class Slow(Broken):
        def score(self, users):
            clock.advance(0.05)  # 50 ms of a 10 ms deadline
            return np.zeros((len(users), 10), np.float32)

    models = fitted_models()
    models["ease"] = Loaded("ease", "slow", Slow(), models["ease"].items, None)
    # Popular runs after ease in the warm route and finds the deadline gone.
    r = rec(
        models,
        {"routing": {"warm_strategies": ["ease", "popular"]}},
        runner=functools.partial(run_inline, clock=clock),
    )
    res = r.recommend(hist("x", "i0", "i2"), RecRequest(n=3, deadline_s=0.01))
    assert res.degraded and "popular" in res.dropped


def test_disabled_strategy_is_not_used():
    r = rec(overrides={"strategies": {"ease": {"enabled": False}}})
    res = r.recommend(hist("x", "i0", "i2"), RecRequest(n=3))
    assert set(res.model_versions) == {"popular"}


# -- blend math -----------------------------------------------------------------------------
def test_weighted_minmax_blend_math():
    r = rec(overrides={"strategies": {"ease": {"weight": 2.0}, "popular": {"weight": 1.0}}})
    out = r.blend(
        {"ease": [("a", 10.0), ("b", 5.0), ("c", 0.0)], "popular": [("c", 3.0), ("a", 1.0)]}
    )
    got = {i.item_id: (i.score, i.sources) for i in out}
    assert got["a"][0] == pytest.approx(2.0 * 1.0 + 0.0)
    assert got["b"][0] == pytest.approx(2.0 * 0.5)
    assert got["c"][0] == pytest.approx(0.0 + 1.0)
    assert got["c"][1] == {"ease": 0.0, "popular": 1.0}
    assert [i.item_id for i in out] == ["a", "b", "c"]


def test_rank_normalisation():
    r = rec(overrides={"routing": {"normalize": "rank"}, "strategies": {"ease": {"weight": 1.0}}})
    out = r.blend({"ease": [("a", 100.0), ("b", 99.0), ("c", -5.0), ("d", -6.0)]})
    assert [round(i.score, 6) for i in out] == [1.0, 0.75, 0.5, 0.25]


def test_rrf_blend_math():
    r = rec(overrides={"routing": {"blend": "rrf", "rrf_k": 10}})
    out = r.blend({"ease": [("a", 9.0), ("b", 1.0)], "popular": [("b", 50.0), ("a", 2.0)]})
    got = {i.item_id: i for i in out}
    assert got["a"].sources["ease"] == pytest.approx(1.0 / 11)
    assert got["a"].sources["popular"] == pytest.approx(0.2 / 12)
    assert got["b"].score == pytest.approx(1.0 / 12 + 0.2 / 11)
    assert out[0].item_id == "a"


def test_constant_scores_count_fully():
    r = rec()
    out = r.blend({"ease": [("a", 3.0), ("b", 3.0)]})
    assert [i.score for i in out] == [1.0, 1.0]


def _reference_blend(r: Recommender, per: dict) -> list[tuple[str, float, dict]]:
    """The blend written out plainly (a running sum per item, then sort by (-score, id)),
    to check the vectorised fusion against."""
    totals: dict[str, float] = {}
    sources: dict[str, dict[str, float]] = {}
    for name, cands in per.items():
        if not cands:
            continue
        w = r.config.weight(name)
        scores = [s for _, s in cands]
        finite = [s for s in scores if np.isfinite(s)]
        lo, hi = (min(finite), max(finite)) if finite else (0.0, 0.0)
        for item, s in cands:
            if not finite or not np.isfinite(s):
                c = 0.0
            elif hi - lo <= 1e-12:
                c = w
            else:
                c = w * (s - lo) / (hi - lo)
            totals[item] = totals.get(item, 0.0) + c
            sources.setdefault(item, {})[name] = c
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))
    return [(i, t, sources[i]) for i, t in ranked]


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_blend_equals_the_plain_running_sum(seed):
    rng = np.random.default_rng(seed)
    r = rec(overrides={"strategies": {"ease": {"weight": 1.5}, "popular": {"weight": 0.3}}})
    pool = [f"i{k}" for k in range(300)]
    per = {}
    for name in ("ease", "popular"):
        picked = rng.choice(pool, size=200, replace=False)
        # Coarse scores so that equal totals (ties broken by id) actually happen.
        scores = np.round(rng.normal(size=200), 1)
        scores[rng.integers(0, 200, 3)] = -np.inf
        order = np.argsort(-scores, kind="stable")
        per[name] = [(str(picked[i]), float(scores[i])) for i in order]
    got = [(i.item_id, i.score, i.sources) for i in r.blend(per)]
    want = _reference_blend(r, per)
    assert [g[0] for g in got] == [w[0] for w in want]
    assert [g[1] for g in got] == [w[1] for w in want]  # same summation order: bit-identical
    assert [g[2] for g in got] == [w[2] for w in want]
    assert len({t for _, t, _ in want}) < len(want)  # the case has ties to break


@pytest.mark.parametrize("seed", range(3))
def test_fusion_on_item_indices_equals_fusion_on_ids(seed):
    """Candidates that carry indices of one shared IdMap are fused on integers; the order
    (ties by id string), totals and sources must be those of the string path."""
    from features.idmap import IdMap
    from recsys.core.types import Candidates

    rng = np.random.default_rng(seed)
    # Ids whose string order differs from their index order ("i10" < "i2").
    idmap = IdMap([f"i{k}" for k in rng.permutation(300)])
    r = rec(overrides={"strategies": {"ease": {"weight": 1.5}, "popular": {"weight": 0.3}}})
    with_idx, plain = {}, {}
    for name in ("ease", "popular"):
        idx = rng.choice(300, size=150, replace=False)
        scores = np.round(rng.normal(size=150), 1)
        order = np.argsort(-scores, kind="stable")
        idx, scores = idx[order], scores[order]
        names = [idmap.ids[i] for i in idx]
        with_idx[name] = Candidates(names, scores, idx=idx, idmap=idmap)
        plain[name] = list(zip(names, scores.tolist(), strict=True))
    got = [(i.item_id, i.score, i.sources) for i in r.blend(with_idx)]
    want = [(i.item_id, i.score, i.sources) for i in r.blend(plain)]
    assert got == want
    assert len({t for _, t, _ in want}) < len(want)  # ties were broken


# -- business rules -------------------------------------------------------------------------
def ids(res):
    return [i.item_id for i in res.items]


def test_seen_purchases_excluded_by_default_and_views_not():
    r = rec()
    res = r.recommend(hist("x", "i0", "i1"), RecRequest(n=10))
    assert "i0" not in ids(res) and "i1" not in ids(res)
    res = r.recommend(hist("x", "i0", "i1", type="view"), RecRequest(n=10))
    assert "i0" in ids(res)
    r2 = rec(overrides={"routing": {"exclude_seen": False}})
    assert "i0" in ids(r2.recommend(hist("x", "i0", "i1"), RecRequest(n=10)))


def test_dislikes_always_excluded():
    r = rec(overrides={"routing": {"exclude_seen": False}})
    h = UserHistory(
        "x", ["i0", "i1", "i2"], ["dislike", "purchase", "purchase"], [1, 1, 1], [3, 2, 1]
    )
    assert "i0" not in ids(r.recommend(h, RecRequest(n=10)))


def test_request_exclude():
    res = rec().recommend(hist("x", "i0", "i2"), RecRequest(n=10, exclude=["i1", "i3"]))
    assert not {"i1", "i3"} & set(ids(res)) and ids(res)


def test_category_filter():
    res = rec().recommend(hist("x", "i0", "i1"), RecRequest(n=10, category="Books"))
    assert ids(res) and all(int(i[1:]) % 2 == 0 for i in ids(res))
    res = rec().recommend(UserHistory("new"), RecRequest(n=10, category="music"))
    assert ids(res) and all(int(i[1:]) % 2 == 1 for i in ids(res))
    assert ids(rec().recommend(UserHistory("new"), RecRequest(n=10, category="none"))) == []


def test_unavailable_items_never_served():
    r = rec(cat=catalog(unavailable={"i0", "i1"}))
    assert not {"i0", "i1"} & set(ids(r.recommend(UserHistory("new"), RecRequest(n=10))))
    assert "i1" not in ids(r.recommend(hist("x", "i2", "i3"), RecRequest(n=10)))


def test_max_per_category():
    r = rec(overrides={"routing": {"max_per_category": 1}})
    res = r.recommend(UserHistory("new"), RecRequest(n=10))
    assert len(res.items) == 2  # one book, one music item
    cats = [CATS[int(i[1:])][0] for i in ids(res)]
    assert sorted(cats) == ["books", "music"]


def test_paging_is_consistent():
    r = rec()
    h = UserHistory("new")
    full = ids(r.recommend(h, RecRequest(n=10)))
    assert len(full) == 10
    assert ids(r.recommend(h, RecRequest(n=3, offset=0))) == full[:3]
    assert ids(r.recommend(h, RecRequest(n=3, offset=3))) == full[3:6]
    assert ids(r.recommend(h, RecRequest(n=3, offset=9))) == full[9:]


def test_explain_sources_in_dict():
    res = rec().recommend(hist("x", "i0", "i2"), RecRequest(n=2, explain=True))
    d = res.to_dict(explain=True)
    assert set(d) == {"route", "items", "degraded", "model_versions", "profile"}
    assert d["profile"] is None  # no serving profile in this config
    assert "sources" in d["items"][0] and "sources" not in res.to_dict()["items"][0]
    assert "profile" not in res.to_dict()


# -- batch fast path ------------------------------------------------------------------------
def test_batch_equals_single_and_batches_calls():
    data = tiny_data()
    models = fitted_models(data)
    calls = {"n": 0}
    orig = models["ease"].model.recommend

    def counting(*a, **kw):
        calls["n"] += 1
        return orig(*a, **kw)

    models["ease"].model.recommend = counting
    r = rec(models)
    hs = histories_from_data(data)
    assert [h.user_id for h in hs] == [f"u{k}" for k in range(6)]
    assert hs[0].items == ["i2", "i1", "i0"]  # newest first
    reqs = [RecRequest(n=4) for _ in hs]
    batch = r.recommend_batch(hs, reqs)
    assert calls["n"] == 1
    single = [r.recommend(h, q) for h, q in zip(hs, reqs, strict=True)]
    assert [ids(a) for a in batch] == [ids(b) for b in single]
    assert [a.route for a in batch] == ["warm"] * 6


# -- popular / similar ----------------------------------------------------------------------
def test_popular_and_category():
    r = rec()
    assert ids(r.popular(3))[0] == "i0"
    assert all(int(i[1:]) % 2 == 1 for i in ids(r.popular(5, category="music")))


def test_similar_items():
    res = rec().similar_items("i1", n=3)
    assert "i1" not in ids(res) and ids(res)[0] in {"i0", "i2"}
    assert not res.degraded


def test_similar_for_item_no_model_knows_falls_back_to_category_popular():
    cat = catalog()
    cat = cat.updated([("new-book", True, ("books",))], 1)
    res = rec(cat=cat).similar_items("new-book", n=3)
    assert res.degraded and ids(res) and all(int(i[1:]) % 2 == 0 for i in ids(res))


def test_equal_item_maps_share_one_history_mapping():
    from features.idmap import IdMap
    from recsys.core.types import UserHistory, canonical_idmap

    a, b, other = IdMap(["x", "y", "z"]), IdMap(["x", "y", "z"]), IdMap(["z", "y", "x"])
    assert canonical_idmap(a) is canonical_idmap(b) is a
    assert canonical_idmap(other) is other
    h = UserHistory.from_items("u", ["z", "x", "nope"])
    assert h.item_idx(b).tolist() == [2, 0, -1]
    assert h.item_idx(a) is h.item_idx(b)
    assert h.item_idx(other).tolist() == [0, 2, -1]
