"""``recsys train`` and ``recsys models ...`` end to end on a small store in real PostgreSQL."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta

import numpy as np
import pytest

from recsys.cli.main import main
from recsys.models.repository import ModelRepository, get_repository, use_repository
from recsys.offline.training import holdout_metrics, holdout_split
from recsys.store import Event, Item, User, get_engine, session_scope
from recsys.store.training_data import load_catalog, load_interactions
from tests.models.test_repository import CountStrategy, resolver

pytestmark = pytest.mark.postgres

T0 = datetime(2026, 1, 1)


def fill_store(app, n_users: int = 30, n_items: int = 20, n_events: int = 400, seed: int = 1):
    """Users, items (two never interacted with) and time-ordered events via the ORM."""
    rng = np.random.default_rng(seed)
    with session_scope(app) as s:
        users = [User(external_id=f"user-{i}") for i in range(n_users + 1)]  # last: no events
        items = [
            Item(
                external_id=f"sku-{i}",
                title=f"Item {i}",
                description="red mug" if i % 2 else "blue lamp",
                categories=["mugs" if i % 2 else "lamps"],
                price=None if i == 0 else float(i),
                available=i != 3,
            )
            for i in range(n_items + 2)
        ]
        s.add_all(users + items)
        s.flush()
        types = ["view", "click", "cart", "purchase", "dislike"]
        for k in range(n_events):
            u = users[int(rng.integers(0, n_users))]
            # Users in the first half prefer even items, the rest odd ones: learnable signal.
            parity = 0 if users.index(u) < n_users // 2 else 1
            it = items[(2 * int(rng.integers(0, n_items // 2)) + parity) % n_items]
            s.add(
                Event(
                    user_id=u.id,
                    item_id=it.id,
                    type=types[int(rng.integers(0, 5))] if k % 7 else "rating",
                    value=float(rng.integers(1, 6)) if k % 7 == 0 else 1.0,
                    ts=T0 + timedelta(hours=k),
                )
            )


@pytest.fixture
def store_app(app):
    fill_store(app)
    use_repository(
        app,
        ModelRepository(
            app.config["MODEL_DIR"], app.extensions["recsys.sessionmaker"], resolver=resolver
        ),
    )
    return app


def test_load_interactions_matches_the_store(store_app):
    data = load_interactions(get_engine(store_app))
    assert len(data) == 400 and data.n_items == 22
    assert data.items.ids.tolist() == [f"sku-{i}" for i in range(22)]  # row-id order, all items
    assert "user-30" not in data.users  # users without events are left out
    assert data.n_users == len(set(data.user_idx.tolist())) == 30
    with session_scope(store_app) as s:
        rows = s.query(Event, User.external_id, Item.external_id).join(User).join(Item).all()
    by_key = {}
    for ev, uid, iid in rows:
        by_key[(uid, iid, int((ev.ts - datetime(1970, 1, 1)).total_seconds()))] = ev
    got = set()
    for i in range(len(data)):
        key = (
            data.users.ids[data.user_idx[i]],
            data.items.ids[data.item_idx[i]],
            int(data.ts[i]),
        )
        ev = by_key[key]
        assert (
            ev.type
            == ["view", "click", "cart", "purchase", "rating", "dislike"][data.event_type[i]]
        )
        assert ev.value == pytest.approx(data.value[i])
        got.add(key)
    assert len(got) == len(by_key)
    assert data.info["events"] == 400 and data.info["users"] == 30
    assert data.info["ts_min"].startswith("2026-01-01T00:00:00")
    assert sum(data.info["events_by_type"].values()) == 400
    meta = data.item_meta
    assert meta.titles[5] == "Item 5" and meta.categories[5] == ["mugs"]
    assert not meta.available[3] and meta.available[4]
    assert np.isnan(meta.price[0]) and meta.price[7] == 7.0
    ids, cat_meta = load_catalog(get_engine(store_app))
    assert ids.ids.tolist() == data.items.ids.tolist() and cat_meta.titles == meta.titles


def test_load_interactions_sqlite(sqlite_app):
    fill_store(sqlite_app, n_events=50)
    data = load_interactions(get_engine(sqlite_app))
    assert len(data) == 50 and data.n_items == 22
    assert int(data.ts.min()) == int((T0 - datetime(1970, 1, 1)).total_seconds())
    assert np.all(np.diff(data.ts) == 3600)


def test_holdout_metrics_reward_a_real_model(store_app):
    data = load_interactions(get_engine(store_app))
    train, test = holdout_split(data, 0.25)
    assert train.ts.max() < test.ts.min()
    fitted = holdout_metrics(CountStrategy().fit(train), train, test)
    assert fitted["eval_users"] > 0 and 0 < fitted["ndcg@10"] <= 1

    class Reversed(CountStrategy):
        def score(self, users):
            return -super().score(users)

    worst = holdout_metrics(Reversed().fit(train), train, test)
    assert worst["ndcg@10"] < fitted["ndcg@10"]
    assert worst["eval_users"] == fitted["eval_users"]


def _list_json(runner):
    r = runner.invoke(main, args=["models", "list", "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_progress_bar_writes_no_carriage_returns_when_not_a_terminal(store_app):
    runner = store_app.test_cli_runner()
    r = runner.invoke(main, args=["train", "counts"])  # no --quiet: the bar is wanted ...
    assert r.exit_code == 0, r.output
    assert "\r" not in r.output  # ... but stderr is no terminal, so tqdm draws nothing


def test_train_cli_end_to_end(store_app):
    runner = store_app.test_cli_runner()
    r = runner.invoke(main, args=["train", "counts", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "loaded 400 events, 30 users, 22 items" in r.output
    assert "counts: version " in r.output and "holdout: ndcg@10=" in r.output
    assert "active (was none)" in r.output
    listing = _list_json(runner)
    assert list(listing) == ["counts"]
    (v1,) = listing["counts"]["versions"]
    assert listing["counts"]["active"] == v1["version"] and v1["active"] is True
    assert set(v1) == {"version", "active", "created_at", "metrics", "path"}
    assert v1["metrics"]["ndcg@10"] > 0 and v1["metrics"]["holdout"]["protocol"] == "time"
    assert os.path.isfile(os.path.join(v1["path"], "manifest.json"))

    # --if-missing: nothing to do while a version is active.
    r = runner.invoke(main, args=["train", "counts", "--if-missing", "--quiet"])
    assert r.exit_code == 0 and "skipped" in r.output
    assert len(_list_json(runner)["counts"]["versions"]) == 1

    # --no-activate keeps the old one; a hyperparameter override is recorded.
    r = runner.invoke(
        main, args=["train", "counts", "--no-activate", "--param", "counts.smoothing=5", "--quiet"]
    )
    assert r.exit_code == 0, r.output
    listing = _list_json(runner)["counts"]
    v2 = listing["versions"][1]
    assert listing["active"] == v1["version"] and not v2["active"]
    repo = get_repository(store_app)
    assert repo.get_version("counts", v2["version"])["params"]["params"] == {"smoothing": 5}

    r = runner.invoke(main, args=["models", "activate", "counts", v2["version"]])
    assert r.exit_code == 0 and f"{v1['version']} -> {v2['version']}" in r.output
    r = runner.invoke(main, args=["models", "rollback", "counts"])
    assert r.exit_code == 0 and f"rolled back {v2['version']} -> {v1['version']}" in r.output
    r = runner.invoke(main, args=["models", "rollback", "counts"])
    assert r.exit_code == 1 and "nothing to roll back to" in r.output
    assert "Traceback" not in r.output

    r = runner.invoke(main, args=["models", "list"])
    assert r.exit_code == 0 and f"* {v1['version']}" in r.output

    r = runner.invoke(main, args=["models", "verify"])
    assert r.exit_code == 0 and r.output.count("ok ") == 2
    with open(os.path.join(v2["path"], "arrays.npz"), "r+b") as f:
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 0xFF]))
    r = runner.invoke(main, args=["models", "verify", "counts"])
    assert r.exit_code == 1
    assert f"FAILED counts/{v2['version']}: " in r.output and "arrays.npz" in r.output
    assert "1 of 2 version(s) failed" in r.output
    r = runner.invoke(main, args=["models", "activate", "counts", v2["version"]])
    assert r.exit_code == 1 and "arrays.npz checksum mismatch" in r.output


def test_train_gate_refuses_worse_version(store_app):
    runner = store_app.test_cli_runner()
    assert runner.invoke(main, args=["train", "counts", "--quiet"]).exit_code == 0
    repo = get_repository(store_app)
    active = repo.active_version("counts")

    class Worse(CountStrategy):
        def score(self, users):
            return -super().score(users)

    repo.resolver = lambda name: Worse if name == "counts" else resolver(name)
    r = runner.invoke(main, args=["train", "counts", "--gate", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "not activated: gate refused" in r.output and "is worse than" in r.output
    assert repo.active_version("counts") == active
    assert len(repo.list_versions("counts")) == 2


def test_cli_errors_are_clean(store_app):
    runner = store_app.test_cli_runner()
    cases = [
        (["train", "nosuch"], "unknown strategy"),
        (["train", "counts", "--param", "counts.bogus=1"], "counts has no parameter(s) bogus"),
        (["train", "counts", "--param", "oops"], "STRATEGY.NAME=VALUE"),
        (["models", "activate", "counts", "nope"], "unknown version 'nope'"),
        (["models", "activate", "counts", "../x"], "invalid version"),
        (["models", "rollback", "counts"], "has no versions"),
        (["models", "verify", "counts", "nope"], "unknown version"),
        (["models", "verify"], "no model versions"),
    ]
    for args, message in cases:
        r = runner.invoke(main, args=args)
        assert r.exit_code != 0, args
        assert message in r.output, (args, r.output)
        assert (
            "Traceback" not in r.output
            and r.exception is None
            or isinstance(r.exception, SystemExit)
        ), (args, r.exception)
    assert _list_json(runner) == {}


def test_train_on_empty_store_is_a_clean_error(app):
    use_repository(
        app,
        ModelRepository(
            app.config["MODEL_DIR"], app.extensions["recsys.sessionmaker"], resolver=resolver
        ),
    )
    r = app.test_cli_runner().invoke(main, args=["train", "counts"])
    assert r.exit_code == 1 and "no events to train on" in r.output


def test_train_real_strategies_end_to_end(app):
    """The production strategies through `recsys train`, then loaded back and queried."""
    from features.interactions import History, user_batch

    fill_store(app)
    runner = app.test_cli_runner()
    r = runner.invoke(main, args=["train", "popular", "ease", "als", "--quiet", "--json"])
    assert r.exit_code == 0, r.output
    results = {x["strategy"]: x for x in json.loads(r.output)}
    assert set(results) == {"popular", "ease", "als"}
    repo = get_repository(app)
    assert repo.active_versions() == {s: x["version"] for s, x in results.items()}
    data = load_interactions(get_engine(app))
    for name, res in results.items():
        assert res["activated"] and res["metrics"]["eval_users"] > 0, res
        assert 0 <= res["metrics"]["ndcg@10"] <= 1
        loaded = repo.load_version(name)
        assert loaded.version == res["version"] and loaded.nbytes > 0
        assert loaded.items.ids.tolist() == data.items.ids.tolist()
        # A user who bought only even items: recommendations exclude the seen item.
        seen = loaded.items.index("sku-2")
        hist = History(
            item_idx=np.array([seen]),
            event_type=np.array([3], np.int8),
            value=np.ones(1, np.float32),
            ts=np.zeros(1, np.int64),
        )
        batch = user_batch([hist], len(loaded.items))
        ids, scores = loaded.model.recommend(batch, n=5, exclude=[np.array([seen])])
        assert ids.shape == (1, 5) and seen not in ids[0] and np.isfinite(scores[0, 0])
    r = runner.invoke(main, args=["models", "verify"])
    assert r.exit_code == 0 and r.output.count("ok ") == 3


def test_train_into_an_unwritable_model_dir_is_a_one_line_error(app, tmp_path):
    """A model directory that cannot be written (here a regular file where a directory of the
    path should be: refused to root too, unlike chmod 0555) is one line naming it, exit 1, and
    nothing recorded."""
    fill_store(app)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    model_dir = blocker / "models"
    use_repository(
        app,
        ModelRepository(str(model_dir), app.extensions["recsys.sessionmaker"], resolver=resolver),
    )
    runner = app.test_cli_runner()
    r = runner.invoke(main, args=["train", "counts", "--quiet"])
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output and isinstance(r.exception, SystemExit), r.exception
    (line,) = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert f"cannot write to the model directory {model_dir}: Not a directory" in line
    assert line.endswith("nothing was saved")
    assert _list_json(runner) == {}
