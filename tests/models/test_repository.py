"""The model repository on the real PostgreSQL: checksums, round trips, activation, rollback.

A tiny but real strategy (weighted item counts plus one step of item co-occurrence) stands in
for the production ones, so these tests depend only on the contract in strategies.base.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Self

import numpy as np
import pytest
import scipy.sparse as sp

from features.interactions import InteractionData
from recsys.errors import ModelError
from recsys.models.activation import activation_stack
from recsys.models.artifacts import MANIFEST
from recsys.models.repository import ModelRepository, get_repository, use_repository
from recsys.store.training_data import snapshot_info
from strategies.base import Strategy, UserBatch

pytestmark = pytest.mark.postgres


class CountStrategy(Strategy):
    """Popularity plus co-occurrence with the user's history: fitted arrays, personal scores."""

    name = "counts"
    serves_cold = True

    def __init__(self, smoothing: float = 1.0):
        self._params = {"smoothing": smoothing}
        self.smoothing = smoothing

    def fit(self, data: InteractionData) -> Self:
        m = data.matrix(binary=True)
        self.counts_ = np.asarray(m.sum(axis=0)).ravel().astype(np.float32) + self.smoothing
        self.cooc_ = (m.T @ m).tocsr().astype(np.float32)
        return self

    def score(self, users: UserBatch) -> np.ndarray:
        personal = (users.matrix @ self.cooc_).toarray()
        return (personal + self.counts_[None, :] / self.counts_.sum()).astype(np.float32)

    def save(self, path: str) -> None:
        self._save_params(path)
        c = self.cooc_
        np.savez(
            os.path.join(path, "arrays.npz"),
            counts=self.counts_,
            data=c.data,
            indices=c.indices,
            indptr=c.indptr,
            shape=np.asarray(c.shape),
        )

    @classmethod
    def load(cls, path: str) -> Self:
        p = cls._load_params(path)
        self = cls(**p["params"])
        with np.load(os.path.join(path, "arrays.npz"), allow_pickle=False) as z:
            self.counts_ = z["counts"]
            self.cooc_ = sp.csr_matrix(
                (z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"])
            )
        return self


def resolver(name: str) -> type[Strategy]:
    if name == "counts":
        return CountStrategy
    raise ValueError(f"unknown strategy {name!r}")


def small_data(seed: int = 0) -> InteractionData:
    rng = np.random.default_rng(seed)
    n = 300
    users = [f"u{i}" for i in rng.integers(0, 40, n)]
    items = [f"i{i}" for i in rng.zipf(1.5, n) % 25]
    types = rng.choice(["view", "click", "purchase"], n).tolist()
    ts = 1_700_000_000 + np.arange(n) * 3600
    data = InteractionData.from_arrays(
        users, items, types, timestamps=ts, all_item_ids=[f"i{i}" for i in range(30)]
    )
    data.info = snapshot_info(data)
    return data


@pytest.fixture
def repo(app) -> ModelRepository:
    return ModelRepository(
        app.config["MODEL_DIR"], app.extensions["recsys.sessionmaker"], resolver=resolver
    )


@pytest.fixture
def data() -> InteractionData:
    return small_data()


def save(repo, data, metrics=None, smoothing=1.0, **kw) -> str:
    return repo.save_version(CountStrategy(smoothing=smoothing).fit(data), data, metrics, **kw)


def batch(data: InteractionData) -> UserBatch:
    m = data.matrix()
    return UserBatch(matrix=m, sequences=data.sequences(), user_index=np.arange(data.n_users))


def test_save_load_round_trip_scores_equal(repo, data):
    model = CountStrategy(smoothing=0.5).fit(data)
    v = repo.save_version(model, data, {"ndcg@10": 0.3})
    loaded = repo.load_version("counts", v)
    assert (loaded.strategy, loaded.version) == ("counts", v)
    np.testing.assert_array_equal(loaded.model.score(batch(data)), model.score(batch(data)))
    assert loaded.items.ids.tolist() == data.items.ids.tolist()
    assert loaded.users.ids.tolist() == data.users.ids.tolist()
    assert loaded.meta["metrics"] == {"ndcg@10": 0.3}
    assert loaded.meta["params"]["params"] == {"smoothing": 0.5}
    assert loaded.meta["data_snapshot"]["events"] == len(data)
    expected = model.counts_.nbytes + sum(
        a.nbytes for a in (model.cooc_.data, model.cooc_.indices, model.cooc_.indptr)
    )
    assert loaded.nbytes == expected
    assert loaded.path == os.path.join(os.path.abspath(repo.root), "counts", v)


def test_manifest_lists_every_file_and_nothing_is_a_pickle(repo, data):
    v = save(repo, data, {"ndcg@10": 0.1})
    path = repo.get_version("counts", v)["path"]
    manifest = json.load(open(os.path.join(path, MANIFEST)))
    on_disk = sorted(set(os.listdir(path)) - {MANIFEST})
    assert sorted(manifest["files"]) == on_disk
    assert {"params.json", "arrays.npz", "items.npz", "users.npz", "snapshot.json",
            "metrics.json"} <= set(on_disk)  # fmt: skip
    for name in on_disk:
        full = os.path.join(path, name)
        if name.endswith(".npz"):
            with np.load(full, allow_pickle=False) as z:
                for key in z.files:
                    assert z[key].dtype != object
        else:
            json.load(open(full))
    snap = json.load(open(os.path.join(path, "snapshot.json")))
    assert snap["events"] == len(data) and snap["users"] == data.n_users
    assert snap["items"] == 30 and sum(snap["events_by_type"].values()) == len(data)
    assert snap["ts_min"] < snap["ts_max"]


def _flip_byte(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


def _array_offset(npz: str) -> int:
    """Offset of a byte inside the stored array data (not the zip header)."""
    with zipfile.ZipFile(npz) as z:
        info = z.getinfo("counts.npy")
    return info.header_offset + 30 + len(info.filename) + info.compress_size - 1


@pytest.mark.parametrize("victim", ["arrays.npz", "params.json", "items.npz"])
def test_one_flipped_byte_is_refused_naming_the_file(repo, data, victim):
    v = save(repo, data)
    path = repo.get_version("counts", v)["path"]
    target = os.path.join(path, victim)
    _flip_byte(target, _array_offset(target) if victim == "arrays.npz" else 5)
    with pytest.raises(ModelError) as e:
        repo.load_version("counts", v)
    assert victim in e.value.description and "checksum mismatch" in e.value.description
    with pytest.raises(ModelError, match=victim):
        repo.verify_version("counts", v)


def test_tampered_manifest_is_refused(repo, data):
    v = save(repo, data)
    path = repo.get_version("counts", v)["path"]
    # An attacker who rewrites a file and fixes up the manifest is still caught by the DB hash.
    mpath = os.path.join(path, MANIFEST)
    manifest = json.load(open(mpath))
    manifest["files"]["metrics.json"]["size"] += 0
    manifest["note"] = "edited"
    json.dump(manifest, open(mpath, "w"))
    with pytest.raises(ModelError, match=r"manifest\.json checksum mismatch"):
        repo.load_version("counts", v)


def test_missing_and_extra_files_are_refused(repo, data):
    v = save(repo, data)
    path = repo.get_version("counts", v)["path"]
    os.rename(os.path.join(path, "users.npz"), os.path.join(path, "..", "users.npz.bak"))
    with pytest.raises(ModelError, match=r"users\.npz is missing"):
        repo.load_version("counts", v)
    os.rename(os.path.join(path, "..", "users.npz.bak"), os.path.join(path, "users.npz"))
    repo.load_version("counts", v)  # restored: loads again
    with open(os.path.join(path, "evil.npz"), "wb") as f:
        f.write(b"x")
    with pytest.raises(ModelError, match=r"not in the manifest: \['evil\.npz'\]"):
        repo.load_version("counts", v)
    os.remove(os.path.join(path, "evil.npz"))
    os.remove(os.path.join(path, MANIFEST))
    with pytest.raises(ModelError, match=r"manifest\.json is missing"):
        repo.load_version("counts", v)


def test_unknown_version_and_strategy_refused(repo, data):
    v = save(repo, data)
    with pytest.raises(ModelError, match=r"unknown version 'nope' of strategy 'counts'.*" + v):
        repo.load_version("counts", "nope")
    with pytest.raises(ModelError, match="has no versions"):
        repo.load_version("other", "x")
    with pytest.raises(ModelError, match="no active version"):
        repo.load_version("counts")
    with pytest.raises(ModelError, match="invalid version"):
        repo.load_version("counts", "../../etc")


def test_versions_are_unique_and_sortable(repo, data):
    versions = [save(repo, data) for _ in range(3)]
    assert len(set(versions)) == 3
    assert versions == sorted(versions)
    assert [v["version"] for v in repo.list_versions("counts")] == versions
    with pytest.raises(ModelError, match="already exists"):
        save(repo, data, version=versions[0])


def test_activate_and_rollback(app, repo, data):
    from sqlalchemy import select

    from recsys.store import AuditLog, ModelActivation, session_scope

    changes = []
    repo.add_listener(lambda s, v: changes.append((s, v)))
    a, b, c = (save(repo, data, smoothing=x) for x in (1.0, 2.0, 3.0))
    assert repo.active_versions() == {}
    with pytest.raises(ModelError, match="nothing to roll back to"):
        repo.rollback("counts")
    assert repo.activate("counts", a) is None
    with pytest.raises(ModelError, match=f"no version was active before {a}"):
        repo.rollback("counts")
    assert repo.activate("counts", b, actor="alice") == a
    assert repo.activate("counts", c) == b
    assert repo.active_versions() == {"counts": c}
    assert [v["version"] for v in repo.list_versions("counts") if v["active"]] == [c]
    assert repo.load_version("counts").version == c

    assert repo.rollback_target("counts") == b
    assert repo.rollback("counts", actor="bob") == b
    assert repo.rollback("counts") == a  # twice steps two back, not back to c
    assert repo.active_versions() == {"counts": a}
    assert repo.rollback_target("counts") is None
    with pytest.raises(ModelError, match="nothing to roll back to"):
        repo.rollback("counts")
    assert repo.activate("counts", c) == a
    assert repo.rollback("counts") == a
    assert changes == [("counts", x) for x in (a, b, c, b, a, c, a)]

    with session_scope(app) as s:
        acts = s.scalars(select(ModelActivation).order_by(ModelActivation.id)).all()
        audit = s.scalars(select(AuditLog).order_by(AuditLog.id)).all()
    assert [(x.version, x.previous_version, x.kind) for x in acts][:5] == [
        (a, None, "activate"),
        (b, a, "activate"),
        (c, b, "activate"),
        (b, c, "rollback"),
        (a, b, "rollback"),
    ]
    assert acts[1].actor == "alice" and acts[3].actor == "bob"
    assert [(x.action, x.target, x.before, x.after) for x in audit][3] == (
        "model.rollback",
        "counts",
        {"version": c},
        {"version": b},
    )
    assert len(audit) == len(acts) == 7


def test_activate_refuses_unknown_and_corrupt_versions(repo, data):
    a = save(repo, data)
    b = save(repo, data)
    repo.activate("counts", a)
    with pytest.raises(ModelError, match="unknown version"):
        repo.activate("counts", "20000101T000000Z")
    _flip_byte(os.path.join(repo.get_version("counts", b)["path"], "params.json"), 3)
    with pytest.raises(ModelError, match="params.json checksum mismatch"):
        repo.activate("counts", b)
    assert repo.active_versions() == {"counts": a}


def test_gate_refuses_worse_version(repo, data):
    good = save(repo, data, {"ndcg@10": 0.30, "recall@10": 0.4})
    worse = save(repo, data, {"ndcg@10": 0.20, "recall@10": 0.5})
    unmeasured = save(repo, data, {})
    better = save(repo, data, {"ndcg@10": 0.31})
    repo.activate("counts", good, gate_metric="ndcg@10")  # nothing active: the gate passes
    with pytest.raises(ModelError, match=r"gate refused .*0\.2000 is worse than .*0\.3000"):
        repo.activate("counts", worse, gate_metric="ndcg@10")
    with pytest.raises(ModelError, match="has no holdout ndcg@10"):
        repo.activate("counts", unmeasured, gate_metric="ndcg@10")
    assert repo.active_version("counts") == good
    repo.activate("counts", worse, gate_metric="recall@10")  # better on that metric
    repo.activate("counts", better, gate_metric="ndcg@10")
    assert repo.active_version("counts") == better


def test_get_repository_cached_per_app(app, repo):
    with app.app_context():
        r = get_repository()
        assert get_repository() is r
    assert get_repository(app) is r
    assert r.root == app.config["MODEL_DIR"]
    assert use_repository(app, repo) is repo and get_repository(app) is repo


def test_activation_stack_replays_activations_and_rollbacks():
    from types import SimpleNamespace as Step

    def stack(*steps):
        return activation_stack([Step(kind=k, version=v) for k, v in steps])

    assert stack() == []
    assert stack(("activate", "a"), ("activate", "b"), ("activate", "c")) == ["a", "b", "c"]
    assert stack(("activate", "a"), ("activate", "b"), ("rollback", "a")) == ["a"]
    # Rolled back twice, then a new activation: the stack grows from there.
    steps = [("activate", "a"), ("activate", "b"), ("activate", "c"), ("rollback", "b"),
             ("rollback", "a"), ("activate", "c")]  # fmt: skip
    assert stack(*steps) == ["a", "c"]
    # A rollback row that does not match the stack (history edited by hand) is trusted.
    assert stack(("activate", "a"), ("activate", "b"), ("rollback", "x")) == ["a", "x"]


def test_verified_path_checks_before_handing_out_the_directory(repo, data):
    v = save(repo, data)
    path = repo.verified_path("counts", v)
    assert path == repo.get_version("counts", v)["path"] == repo.version_path("counts", v)
    _flip_byte(os.path.join(path, "metrics.json"), 0)
    with pytest.raises(ModelError, match=r"metrics\.json checksum mismatch"):
        repo.verified_path("counts", v)


def test_sqlite_store_works_too(sqlite_app, data):
    repo = ModelRepository(
        sqlite_app.config["MODEL_DIR"],
        sqlite_app.extensions["recsys.sessionmaker"],
        resolver=resolver,
    )
    a, b = save(repo, data), save(repo, data)
    repo.activate("counts", a)
    repo.activate("counts", b)
    assert repo.rollback("counts") == a
    assert repo.load_version("counts").version == a
