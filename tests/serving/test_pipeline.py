"""The serving pipeline and the recommender's stages as components.

The stage lists drive what runs and what is timed; a stage added to the list runs (and is
reported) without touching the recommender; the cache answers lookups and stores, the pipeline
owns the flow; ARCHITECTURE.md's table is generated from the lists.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

from recsys.core import stages
from recsys.core.recommender import Recommender
from recsys.core.types import RecRequest, UserHistory
from recsys.serving.stages import PIPELINE_STAGES, SCORING, stage_rows
from tests.servicekit import ITEMS, fitted_models

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _recorder():
    seen: list[str] = []
    return seen, lambda name, seconds: seen.append(name) if seconds >= 0 else None


def _models():
    models = fitted_models()
    return lambda name: models.get(name)


WARM = UserHistory.from_items("u", ["i0", "i2"], type="purchase")


def test_stage_names_are_unique_across_the_serving_and_core_lists():
    names = [r[0] for r in stage_rows()]
    assert len(names) == len(set(names))
    assert SCORING in [s[0] for s in PIPELINE_STAGES]
    core = [s.name for s in stages.STAGES]
    # The recommender's stages sit where SCORING stands, in order.
    at = names.index(core[0])
    assert names[at : at + len(core)] == core


def test_each_answer_runs_its_stages_once_in_list_order():
    seen, on_stage = _recorder()
    rec = Recommender(_models(), on_stage=on_stage)
    rec.recommend(WARM, RecRequest(n=3))
    assert seen == ["route", "candidates", "blend", "rank", "rules"]
    seen.clear()
    rec.popular(n=3)
    assert seen == [s.name for s in stages.STAGES if stages.POPULAR in s.answers]
    seen.clear()
    rec.similar_items("i0", n=3)
    assert seen == [s.name for s in stages.STAGES if stages.SIMILAR in s.answers]


def test_a_stage_added_to_the_list_runs_and_is_timed_without_other_changes():
    """ARCHITECTURE.md's "How to add a stage", as code: reverse the blended order for user
    lists only."""

    def reverse(rec, b):
        b.fused = [
            stages.Fused(f.names, f.ids[::-1], f.totals[::-1], f.per[:, ::-1]) for f in b.fused
        ]

    custom = list(stages.STAGES)
    at = [s.name for s in custom].index("rules")
    custom.insert(at, stages.Stage("rerank", reverse, (stages.USER,), "reverse, for the test"))
    seen, on_stage = _recorder()
    plain = Recommender(_models()).recommend(WARM, RecRequest(n=20))
    reranked = Recommender(_models(), stages=custom, on_stage=on_stage).recommend(
        WARM, RecRequest(n=20)
    )
    assert seen == ["route", "candidates", "blend", "rank", "rerank", "rules"]
    assert [i.item_id for i in reranked.items] == [i.item_id for i in plain.items][::-1]
    # Not a user answer: the stage does not run.
    seen.clear()
    Recommender(_models(), stages=custom, on_stage=on_stage).popular(n=3)
    assert "rerank" not in seen


def test_popular_scores_are_relative_to_the_most_popular_item():
    res = Recommender(_models()).popular(n=len(ITEMS))
    scores = [it.score for it in res.items]
    assert scores[0] == pytest.approx(1.0) and all(0 <= s <= 1.0 for s in scores)
    assert scores == sorted(scores, reverse=True)
    assert all(it.sources == {"popular": it.score} for it in res.items)


def test_a_missing_popularity_model_gives_an_empty_degraded_popular_list():
    res = Recommender(lambda name: None).popular(n=3)
    assert res.items == [] and res.degraded and res.skipped == ["popular"]


def test_similar_items_of_an_unknown_item_fall_back_to_its_category_popularity():
    models = fitted_models()
    res = Recommender(lambda n: models["popular"] if n == "popular" else None).similar_items("i0")
    assert res.degraded and res.route == "similar"
    assert "i0" not in [i.item_id for i in res.items]


def test_architecture_stage_table_is_generated_from_the_lists():
    spec = importlib.util.spec_from_file_location(
        "gen_architecture_stages", os.path.join(ROOT, "scripts", "gen_architecture_stages.py")
    )
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    with open(os.path.join(ROOT, "ARCHITECTURE.md")) as f:
        text = f.read()
    assert gen.render(text) == text, "run scripts/gen_architecture_stages.py"
    for name, *_ in stage_rows():
        assert f"| `{name}` |" in text


# -- the pipeline over a real app (PostgreSQL + Redis) -------------------------------------------
def _timing(resp) -> list[str]:
    return [part.split(";")[0].strip() for part in resp.headers["Server-Timing"].split(",")]


@pytest.mark.postgres
@pytest.mark.redis
def test_a_miss_runs_every_user_stage_and_a_hit_only_the_lookup(served_app):
    client = served_app.test_client()
    miss = client.get("/v1/users/u1/recommendations?n=3")
    assert miss.get_json()["cached"] is False
    got = _timing(miss)
    for name in ("cache_lookup", "history", "turn_wait", "route", "candidates", "blend"):
        assert name in got, got
    for name in ("rules", "render", "cache_store", "fields"):
        assert name in got, got
    hit = client.get("/v1/users/u1/recommendations?n=3")
    assert hit.get_json()["cached"] is True
    got = _timing(hit)
    assert "cache_lookup" in got
    assert not {"history", "candidates", "render", "cache_store"} & set(got), got


@pytest.mark.postgres
@pytest.mark.redis
def test_a_failed_computation_releases_the_stampede_lock(served_app):
    from recsys.serving.cache import get_cache

    cache = get_cache(served_app)
    ctx = {"test": "lock"}
    first = cache.lookup("lock-user", ctx)
    assert first.hit is None and first.lock is not None
    # Another request now would find the lock held and wait; released, it takes the lock.
    cache.release(first)
    second = cache.lookup("lock-user", ctx)
    assert second.hit is None and second.lock is not None
    cache.store(second, b"route\n{}")
    third = cache.lookup("lock-user", ctx)
    assert third.hit == b"route\n{}" and third.lock is None


def test_blend_orders_by_total_and_breaks_ties_by_item_id():
    rec = Recommender(_models())
    fused = rec.fuse({"ease": [("x", 1.0), ("b", 1.0), ("c", 0.0)]})
    # min-max normalised: x and b tie at 1.0, then c; the tie goes to the smaller id.
    assert fused.ids == ["b", "x", "c"]
    assert np.allclose(fused.totals, [1.0, 1.0, 0.0])
