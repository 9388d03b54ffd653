"""Small real strategies for the runtime/gunicorn tests, and an app module for gunicorn.

``TinyPop`` is a genuine (if simple) model: it learns item popularity from the interactions,
saves it as ``.npz`` and loads it with ``allow_pickle=False``, so it goes through the real model
repository (checksums, manifest) exactly like the production strategies. ``delay_s`` makes its
scoring slow on purpose (deadline and warm-up tests).

``python -m gunicorn -c gunicorn.conf.py tests.runtime_support:app`` serves the real app with
these classes registered in its model repository (configured from RECSYS_* variables).
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np

from features.interactions import InteractionData
from strategies.base import Strategy, UserBatch

# Opened by a test to let a ``gated`` model's scoring (its warm-up) finish.
SCORE_GATE = threading.Event()


class TinyPop(Strategy):
    name = "tiny"
    serves_cold = True

    def __init__(self, delay_s: float = 0.0, pad_items: int = 0, gated: bool = False):
        self.delay_s = delay_s
        self.pad_items = pad_items
        self.gated = gated

    def fit(self, data: InteractionData) -> TinyPop:
        counts = np.bincount(data.item_idx, minlength=data.n_items).astype(np.float32)
        self.counts_ = counts
        # Padding makes the model bigger on purpose (memory budget tests).
        self.pad_ = np.zeros(self.pad_items, np.float32)
        return self

    def score(self, users: UserBatch) -> np.ndarray:
        if self.gated:  # scoring waits until the test opens SCORE_GATE (in-process tests)
            SCORE_GATE.wait(60)
        if self.delay_s:
            time.sleep(self.delay_s)
        out = np.tile(self.counts_, (len(users), 1))
        # Personal touch, so batched and unbatched results can be told apart per user.
        out += np.asarray(users.matrix.todense(), dtype=np.float32) * 0.5
        return out

    def similar_items(self, items, n=10):
        from strategies.base import top_n

        s = np.tile(self.counts_, (len(items), 1))
        s[np.arange(len(items)), np.asarray(items)] = -np.inf
        return top_n(s, n)

    def save(self, path: str) -> None:
        self._save_params(path)
        np.savez(os.path.join(path, "arrays.npz"), counts=self.counts_, pad=self.pad_)

    @classmethod
    def load(cls, path: str) -> TinyPop:
        meta = cls._load_params(path)
        self = cls(**meta["params"])
        with np.load(os.path.join(path, "arrays.npz"), allow_pickle=False) as z:
            self.counts_ = z["counts"]
            self.pad_ = z["pad"]
        return self


def named(name: str) -> type[TinyPop]:
    """A TinyPop subclass registered under another strategy name."""
    return type(f"Tiny_{name}", (TinyPop,), {"name": name})


CLASSES = {n: named(n) for n in ("tiny", "tiny_a", "tiny_b", "tiny_c", "slow")}
CLASSES["tiny"] = TinyPop


def resolver(name: str) -> type[Strategy]:
    if name in CLASSES:
        return CLASSES[name]
    from strategies import get_strategy_class

    return get_strategy_class(name)


def sample_data(n_users: int = 20, n_items: int = 30, seed: int = 0) -> InteractionData:
    rng = np.random.default_rng(seed)
    users = [f"u{rng.integers(n_users)}" for _ in range(200)]
    # Skewed popularity so the model has something to learn.
    items = [f"i{min(int(rng.zipf(1.5)) - 1, n_items - 1)}" for _ in range(200)]
    return InteractionData.from_arrays(
        users, items, "purchase", all_item_ids=[f"i{j}" for j in range(n_items)]
    )


def fit(name: str = "tiny", **params) -> TinyPop:
    return CLASSES[name](**params).fit(sample_data())


def _make_app():
    from recsys import create_app
    from recsys.models.repository import get_repository

    application = create_app()
    get_repository(application).resolver = resolver
    return application


if os.environ.get("RECSYS_TEST_GUNICORN_APP"):
    app = _make_app()
