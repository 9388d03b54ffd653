"""Small real strategies and a tiny dataset for request-path tests (no mocks of the models).

``Counts`` (popularity) and ``Cooc`` (item-item co-occurrence) implement the strategy contract
exactly like the production strategies do, so the Recommender is exercised end to end.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from features.idmap import IdMap
from features.interactions import InteractionData, ItemMeta
from strategies.base import Strategy, UserBatch, top_n


class Counts(Strategy):
    name = "popular"
    serves_cold = True

    def fit(self, data: InteractionData):
        m = data.matrix(binary=True)
        self.counts_ = np.asarray(m.sum(axis=0)).ravel().astype(np.float32)
        return self

    def score(self, users: UserBatch) -> np.ndarray:
        return np.tile(self.counts_, (len(users), 1))

    def save(self, path):
        os.makedirs(path, exist_ok=True)
        np.savez(os.path.join(path, "counts.npz"), counts=self.counts_)
        self._save_params(path)

    @classmethod
    def load(cls, path):
        s = cls()
        s.counts_ = np.load(os.path.join(path, "counts.npz"), allow_pickle=False)["counts"]
        return s


class Cooc(Strategy):
    """Scores items by co-occurrence with the user's current history (changes with events)."""

    name = "ease"

    def fit(self, data: InteractionData):
        m = data.matrix(binary=True)
        c = (m.T @ m).toarray().astype(np.float32)
        np.fill_diagonal(c, 0.0)
        self.cooc_ = c
        return self

    def score(self, users: UserBatch) -> np.ndarray:
        return np.asarray(users.matrix @ self.cooc_, dtype=np.float32)

    def similar_items(self, items, n=10):
        s = self.cooc_[np.asarray(items)].copy()
        s[np.arange(len(items)), items] = -np.inf
        s[s <= 0] = -np.inf
        return top_n(s, n)

    def save(self, path):
        os.makedirs(path, exist_ok=True)
        np.savez(os.path.join(path, "cooc.npz"), cooc=self.cooc_)
        with open(os.path.join(path, "params.json"), "w") as f:
            json.dump({"name": self.name, "params": {}}, f)

    @classmethod
    def load(cls, path):
        s = cls()
        s.cooc_ = np.load(os.path.join(path, "cooc.npz"), allow_pickle=False)["cooc"]
        return s


class Broken(Cooc):
    def score(self, users):
        raise RuntimeError("boom")


@dataclass
class Loaded:
    """A LoadedModel-shaped object (recsys.models.repository.LoadedModel has the same fields)."""

    strategy: str
    version: str
    model: Strategy
    items: IdMap
    users: IdMap
    meta: dict = field(default_factory=dict)


# Items i0..i9: even ones in "books", odd ones in "music". i0 is the most popular.
ITEMS = [f"i{k}" for k in range(10)]
CATS = [["books"] if k % 2 == 0 else ["music"] for k in range(10)]


def tiny_data() -> InteractionData:
    """u0..u5 buy overlapping baskets; co-occurrence makes i1 the best match for i0+i2."""
    baskets = {
        "u0": ["i0", "i1", "i2"],
        "u1": ["i0", "i1", "i2", "i3"],
        "u2": ["i0", "i1", "i4"],
        "u3": ["i0", "i5", "i6"],
        "u4": ["i0", "i3", "i7"],
        "u5": ["i8", "i0", "i3"],
    }
    us, its, ts = [], [], []
    t = 1_700_000_000
    for u, b in baskets.items():
        for it in b:
            us.append(u)
            its.append(it)
            ts.append(t)
            t += 60
    meta = ItemMeta(
        titles=ITEMS,
        descriptions=[""] * 10,
        categories=CATS,
        available=np.ones(10, bool),
    )
    return InteractionData.from_arrays(
        us, its, "purchase", timestamps=ts, all_item_ids=ITEMS, item_meta=meta
    )


def fitted_models(data: InteractionData | None = None) -> dict[str, Loaded]:
    data = data or tiny_data()
    return {
        "popular": Loaded("popular", "p1", Counts().fit(data), data.items, data.users),
        "ease": Loaded("ease", "e1", Cooc().fit(data), data.items, data.users),
    }


def empty_matrix(n: int) -> sp.csr_matrix:
    return sp.csr_matrix((1, n), dtype=np.float32)


ADMIN_TOKEN = "test-admin-token"
BASKETS = {
    "u0": ["i0", "i1", "i2"],
    "u1": ["i0", "i1", "i2", "i3"],
    "u2": ["i0", "i1", "i4"],
    "u3": ["i0", "i5", "i6"],
    "u4": ["i0", "i3", "i7"],
    "u5": ["i8", "i0", "i3"],
    "u6": ["i2", "i4", "i6", "i8", "i1"],
}


def seed_store(client) -> None:
    """Catalogue and purchases through the public API (so ingestion is exercised too)."""
    for k, item in enumerate(ITEMS):
        r = client.put(f"/v1/items/{item}", json={"title": f"Item {k}", "categories": CATS[k]})
        assert r.status_code in (200, 201), r.get_json()
    events = []
    t = 1_700_000_000
    for u, basket in BASKETS.items():
        for it in basket:
            events.append({"user_id": u, "item_id": it, "type": "purchase", "timestamp": t})
            t += 60
    r = client.post("/v1/events", json=events)
    assert r.status_code == 201, r.get_json()


def train_and_register(app) -> dict[str, str]:
    """Fit real popular + EASE models on the store and activate them via the repository."""
    from recsys.models.repository import get_repository
    from recsys.store import get_engine
    from recsys.store.training_data import load_interactions
    from strategies.ease import EASEStrategy
    from strategies.popular import PopularStrategy

    data = load_interactions(get_engine(app))
    repo = get_repository(app)
    out = {}
    for model in (PopularStrategy(half_life_days=None), EASEStrategy(l2=5.0, topk=None)):
        out[model.name] = repo.save_version(model.fit(data), data, activate=True)
    return out
