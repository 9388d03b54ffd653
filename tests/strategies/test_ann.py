"""Approximate candidate retrieval (strategies/_ann.py through ALS and BPR): recall against
exact search, exact fallback below the threshold, persistence with the model's checksums."""

from __future__ import annotations

import csv
import json
import os
from datetime import datetime

import numpy as np
import pytest

from features.interactions import InteractionData, UserBatch
from recsys.errors import ModelError
from recsys.models import artifacts
from strategies._arrays import ANN_FILES
from strategies.als import ALSStrategy
from strategies.base import Strategy
from strategies.bpr import BPRStrategy

N_ITEMS, N_USERS, N_EVENTS = 3000, 10_000, 100_000


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> InteractionData:
    """A small synthetic shop (``recsys synth``'s generator: power-law popularity, categories,
    sessions), so the factors have a real shop's structure and spread of norms."""
    from recsys.offline.synth import SynthParams, generate

    out = str(tmp_path_factory.mktemp("synth"))
    generate(out, SynthParams(items=N_ITEMS, users=N_USERS, events=N_EVENTS, seed=5))
    with open(os.path.join(out, "interactions.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    return InteractionData.from_arrays(
        [r["user_id"] for r in rows],
        [r["item_id"] for r in rows],
        event_types=[r["event"] for r in rows],
        timestamps=[int(r["timestamp"]) for r in rows],
        all_item_ids=[f"i{x}" for x in range(N_ITEMS)],
    )


def batch(data: InteractionData, rows: np.ndarray) -> UserBatch:
    m = data.matrix()[rows]
    seqs = data.sequences()
    return UserBatch(matrix=m, sequences=[seqs[r] for r in rows], user_index=rows)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    pairs = zip(found, exact, strict=True)
    return float(np.mean([len(np.intersect1d(a[a >= 0], b)) / len(b) for a, b in pairs]))


@pytest.fixture(scope="module", params=[ALSStrategy, BPRStrategy], ids=["als", "bpr"])
def fitted(request, data):
    kw = {"iterations": 5} if request.param is ALSStrategy else {"iterations": 10}
    return request.param(ann_min_items=1000, num_threads=1, **kw).fit(data)


def test_recall_at_100_against_exact_search(fitted, data):
    assert fitted.ann_ip_ is not None and fitted.ann_cos_ is not None
    rows = np.arange(0, N_USERS, 25)
    users = batch(data, rows)
    m = users.matrix
    seen = [m.indices[m.indptr[r] : m.indptr[r + 1]] for r in range(len(rows))]
    ids, scores = fitted.recommend(users, n=100, exclude=seen)
    exact_ids, exact_scores = Strategy.recommend(fitted, users, n=100, exclude=seen)
    assert recall(ids, exact_ids) >= 0.95
    # candidates are scored exactly: the scores of the items found are the exact ones
    full = fitted.score(users)
    np.testing.assert_allclose(scores, np.take_along_axis(full, ids, axis=1), rtol=1e-4, atol=1e-4)
    for r, s in enumerate(seen):
        assert not np.isin(ids[r], s).any()
    unit = fitted._unit_factors()
    # items with events (an item without any has a zero vector: every item is as similar)
    items = np.flatnonzero(np.abs(unit).sum(axis=1) > 0)[::10]
    sim, _ = fitted.similar_items(items, n=100)
    exact_sim, _ = artifacts_top_similar(unit, items, 100)
    assert recall(sim, exact_sim) >= 0.95
    assert not (sim == items[:, None]).any()


def artifacts_top_similar(unit: np.ndarray, items: np.ndarray, n: int):
    from strategies._arrays import top_similar

    return top_similar(unit[items] @ unit.T, items, n)


def test_below_the_threshold_the_search_is_exact(data):
    model = ALSStrategy(iterations=3, num_threads=1, ann_min_items=N_ITEMS + 1).fit(data)
    assert model.ann_ip_ is None and model.ann_cos_ is None
    users = batch(data, np.arange(50))
    np.testing.assert_array_equal(
        model.recommend(users, n=20)[0], Strategy.recommend(model, users, n=20)[0]
    )
    off = ALSStrategy(iterations=3, num_threads=1, ann_min_items=0).fit(data)
    assert off.ann_ip_ is None


def test_a_category_restriction_searches_exactly(fitted, data):
    users = batch(data, np.arange(20))
    allowed = np.arange(0, N_ITEMS, 7)
    ids, _ = fitted.recommend(users, n=10, candidates=allowed)
    exact, _ = Strategy.recommend(fitted, users, n=10, candidates=allowed)
    np.testing.assert_array_equal(ids, exact)


def test_the_index_is_saved_checksummed_and_versioned(tmp_path, fitted, data):
    name = fitted.name
    path, version = artifacts.claim_version_dir(str(tmp_path), name, "v1", lambda v: False)
    w = artifacts.write_version(path, fitted, data, {}, version, datetime(2026, 1, 2))
    manifest = artifacts.verify_version_dir(path, name, version, w.manifest_sha256)
    assert set(ANN_FILES.values()) <= set(manifest["files"])
    ann = json.load(open(os.path.join(path, "params.json")))["ann"]
    assert ann["library"] == "hnswlib" and ann["format"] == 2 and ann["version"]
    assert ann["indexes"]["ip"]["n"] == N_ITEMS
    assert ann["indexes"]["ip"]["graph"] == "l2-mips" and "graph" not in ann["indexes"]["cos"]
    loaded, _, _ = artifacts.load_strategy(path, type(fitted), f"{name}/v1")
    users = batch(data, np.arange(40))
    for a, b in (
        (loaded.recommend(users, n=50), fitted.recommend(users, n=50)),
        (loaded.similar_items(np.arange(5), 20), fitted.similar_items(np.arange(5), 20)),
    ):
        np.testing.assert_array_equal(a[0], b[0])
    # one byte of the index changed: refused before hnswlib reads it
    target = os.path.join(path, ANN_FILES["ip"])
    with open(target, "r+b") as f:
        f.seek(os.path.getsize(target) // 2)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x01]))
    with pytest.raises(ModelError, match=r"ann_ip\.hnsw checksum mismatch"):
        artifacts.verify_version_dir(path, name, version, w.manifest_sha256)


@pytest.mark.parametrize("cls", [ALSStrategy, BPRStrategy], ids=["als", "bpr"])
@pytest.mark.parametrize("ann_min_items", [0, 50], ids=["exact", "index"])
def test_items_without_a_training_event_are_never_returned(tmp_path, cls, ann_min_items):
    """Catalogue items no event touched keep implicit's zero factors (and, for BPR, a zero
    bias): a score of 0 that beat every item with a negative score (BPR's exact scan at M).
    Neither the scan, the index, similar items nor a reloaded model returns them."""
    rng = np.random.default_rng(3)
    n_items, dead = 120, np.array([5, 17, 60, 119])
    live = np.setdiff1d(np.arange(n_items), dead)
    users = [f"u{u}" for u in range(400) for _ in range(6)]
    items = [f"i{x}" for x in rng.choice(live, size=len(users))]
    data = InteractionData.from_arrays(users, items, all_item_ids=[f"i{x}" for x in range(n_items)])
    dead_idx = np.sort(data.items.indices([f"i{x}" for x in dead]))
    model = cls(ann_min_items=ann_min_items, num_threads=1, factors=8, iterations=5).fit(data)
    assert (model.ann_ip_ is not None) == (ann_min_items > 0)
    np.testing.assert_array_equal(model.untrained_, dead_idx)
    rows = np.arange(40)
    for m in (model, loaded(tmp_path, model)):
        ids, scores = m.recommend(batch(data, rows), n=25)  # the index answers n <= 2 n + ...
        assert not np.isin(ids, dead_idx).any() and (ids >= 0).all()
        assert np.isfinite(scores).all()
        everything, _ = Strategy.recommend(m, batch(data, rows), n=n_items)  # the exact scan
        assert ((everything >= 0).sum(axis=1) == n_items - len(dead)).all()
        sim, _ = m.similar_items(np.flatnonzero(~np.isin(np.arange(n_items), dead_idx))[:20], 30)
        assert not np.isin(sim, dead_idx).any()
        none, _ = m.similar_items(dead_idx[:1], 10)
        assert (none == -1).all()  # an item the model never saw has no neighbours in it


def loaded(tmp_path, model):
    path = str(tmp_path / f"{model.name}-{id(model)}")
    model.save(path)
    return type(model).load(path)


def test_mips_vectors_turn_the_largest_inner_product_into_the_nearest_point():
    from strategies._ann import mips_vectors

    rng = np.random.default_rng(0)
    v = rng.normal(size=(300, 6)).astype(np.float32) * rng.uniform(0.1, 3, size=(300, 1))
    q = rng.normal(size=(20, 6)).astype(np.float32)
    aug = mips_vectors(v)
    norms = np.linalg.norm(aug, axis=1)
    np.testing.assert_allclose(norms, norms.max(), rtol=1e-5)  # every row on one sphere
    qa = np.hstack([q, np.zeros((20, 1), np.float32)])
    dist = ((qa[:, None, :] - aug[None, :, :]) ** 2).sum(axis=2)
    np.testing.assert_array_equal(np.argmin(dist, axis=1), np.argmax(q @ v.T, axis=1))


def test_an_inner_product_index_of_format_1_is_still_read(tmp_path):
    """Models saved before the L2 graph (format 1: an hnswlib "ip" graph) load and search."""
    import hnswlib

    from strategies._ann import AnnIndex

    rng = np.random.default_rng(1)
    v = rng.normal(size=(200, 5)).astype(np.float32)
    old = hnswlib.Index(space="ip", dim=5)
    old.init_index(max_elements=200, ef_construction=100, M=16, random_seed=0)
    old.add_items(v, np.arange(200))
    path = str(tmp_path / "ann_ip.hnsw")
    old.save_index(path)
    index = AnnIndex.load(path, {"space": "ip", "n": 200, "dim": 5}, v)
    assert not index.mips
    q = rng.normal(size=(3, 5)).astype(np.float32)
    ids = index.search(q, 5)
    assert ids.shape[0] == 3 and (ids[:, 0] == np.argmax(q @ v.T, axis=1)).all()
