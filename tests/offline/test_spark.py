"""Training on Spark (local[2], one SparkSession for the test session): the same event weights in
Spark SQL, ALS through pyspark.ml, the JDBC read of the real PostgreSQL store, versions saved
like any other, and a Spark-trained version activated on a running gunicorn server.

In CI (CI=true) these run: pyspark (the spark extra), Java and the JDBC driver are installed by
scripts/ensure_spark.sh; elsewhere they skip when one is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest

from features.interactions import InteractionData
from recsys.cli.main import main

pytestmark = pytest.mark.spark

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="session")
def spark():
    problem = None
    try:
        import pyspark  # noqa: F401
    except ImportError:
        problem = "pyspark is not installed (pip install -e '.[spark]')"
    if problem is None and not shutil.which("java"):
        problem = "java is not installed (openjdk-17-jre-headless)"
    from features.spark import jdbc_jar

    if problem is None and not os.path.isfile(jdbc_jar()):
        problem = f"no PostgreSQL JDBC driver at {jdbc_jar()} (libpostgresql-jdbc-java)"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"{problem}: scripts/ensure_spark.sh installs it in CI")
        pytest.skip(problem)
    from features.spark import get_session, stop_session

    yield get_session("local[2]")
    stop_session()


def every_kind_of_event() -> InteractionData:
    """Three users, four items, every event type, repeats and a dislike."""
    return InteractionData.from_arrays(
        ["a", "a", "a", "b", "b", "b", "c", "c", "c", "a"],
        ["i1", "i1", "i2", "i2", "i3", "i3", "i1", "i4", "i4", "i3"],
        [
            "view",
            "purchase",
            "click",
            "cart",
            "rating",
            "view",
            "dislike",
            "rating",
            "cart",
            "view",
        ],
        [1, 1, 1, 1, 4, 1, 1, 2.5, 1, 1],
        list(range(10)),
        all_item_ids=["i1", "i2", "i3", "i4", "i5"],
    )


def cells_matrix(cells, shape) -> np.ndarray:
    out = np.zeros(shape, np.float32)
    for r in cells.collect():
        out[r["user_id"], r["item_id"]] = r["w"]
    return out


@pytest.mark.parametrize("weights", [None, {"view": 0.5, "rating": 3.0, "dislike": 0.0}])
@pytest.mark.parametrize("binary", [False, True])
def test_spark_sql_weights_equal_the_in_process_ones(spark, weights, binary):
    from features.spark import events_from_data, weighted_cells

    data = every_kind_of_event()
    got = cells_matrix(
        weighted_cells(events_from_data(spark, data), weights, binary),
        (data.n_users, data.n_items),
    )
    want = data.matrix(weights, binary=binary).toarray()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert want[2, 0] == 0  # the dislike counts for nothing


def test_the_mapping_of_hyperparameters():
    from strategies.als import ALSStrategy, spark_params

    # 100 cells over 10 users and 20 items: 10 + 5 cells per user and per item.
    assert spark_params(ALSStrategy(regularization=15.0), 100, 10, 20) == {
        "regParam": 1.0,
        "alpha": 0.0,  # binary: 1 + 0 * 1 = implicit's 1.0 * 1
    }
    assert spark_params(ALSStrategy(alpha=4.0, binary=False), 100, 10, 20)["alpha"] == 4.0
    assert spark_params(ALSStrategy(spark_reg_param=0.1), 100, 10, 20)["regParam"] == 0.1


def test_spark_als_learns_the_structure_and_serves_like_implicit(spark):
    """Two disjoint groups of items: each fit ranks a user's own group first; items nobody
    touched keep zero factors."""
    from strategies.als import ALSStrategy
    from strategies.base import UserBatch

    users, items = [], []
    for u in range(30):
        group = range(0, 6) if u % 2 else range(6, 12)
        for i in group:
            if (u + i) % 3:
                users.append(f"u{u}")
                items.append(f"i{i}")
    data = InteractionData.from_arrays(users, items, all_item_ids=[f"i{i}" for i in range(13)])
    model = ALSStrategy(factors=4, iterations=10, engine="spark").fit(data)
    assert model.item_factors_.shape == (13, 4)
    assert not model.item_factors_[12].any()  # never seen
    assert model.spark_["cells"] == len(set(zip(users, items, strict=True)))
    m = data.matrix()
    for u in (0, 1):
        # Each user has two items of their group left to discover.
        ids, _ = model.recommend(UserBatch(matrix=m[u]), n=2, exclude=[m[u].indices])
        own = set(range(0, 6) if u % 2 else range(6, 12))
        assert set(ids[0].tolist()) <= own


# -- the store over JDBC ----------------------------------------------------------------------
def _seeded(make_app, tmp_path):
    from tests.servicekit import seed_store

    app = make_app(MODEL_DIR=str(tmp_path / "models"))
    seed_store(app.test_client())
    return app


@pytest.mark.postgres
def test_train_engine_spark_writes_an_ordinary_als_version(spark, make_app, tmp_path):
    from recsys.models.repository import get_repository
    from recsys.store import get_engine
    from recsys.store.training_data import load_interactions

    app = _seeded(make_app, tmp_path)
    runner = app.test_cli_runner()
    r = runner.invoke(
        main,
        args=["train", "als", "--engine", "spark", "--master", "local[2]", "--holdout", "0.3",
              "--param", "als.factors=4", "--json"]
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    [result] = json.loads(r.output[r.output.index("[") :])
    assert result["activated"] and result["metrics"]["training"]["engine"] == "spark"
    assert "ndcg@10" in result["metrics"]  # the time holdout was evaluated
    repo = get_repository(app)
    repo.verify_version("als", result["version"])  # manifest + checksums
    loaded = repo.load_version("als")
    assert loaded.version == result["version"]
    # The id maps the in-process path would have written, so serving maps ids the same way.
    data = load_interactions(get_engine(app))
    assert loaded.items.ids.tolist() == data.items.ids.tolist()
    assert loaded.users.ids.tolist() == data.users.ids.tolist()
    snap = repo.get_version("als", result["version"])["data_snapshot"]
    assert snap["events"] == len(data) and snap["users"] == data.n_users
    assert loaded.model.get_params()["engine"] == "spark"
    f = loaded.model.item_factors_
    seen = np.unique(data.item_idx)
    assert f.shape == (data.n_items, 4) and np.abs(f[seen]).sum(axis=1).all()


@pytest.mark.postgres
@pytest.mark.parametrize("half_life_days", [None, 7.0])
def test_popularity_aggregated_in_spark_equals_the_in_process_fit(
    spark, make_app, tmp_path, half_life_days
):
    from recsys.models.repository import get_repository
    from recsys.store import get_engine
    from recsys.store.training_data import load_interactions
    from strategies.popular import PopularStrategy

    app = _seeded(make_app, tmp_path)
    # Spread the events over days, and add a view and a dislike, so decay and weights matter.
    client = app.test_client()
    extra = [
        {"user_id": "u9", "item_id": "i3", "type": "view", "timestamp": 1_700_900_000},
        {"user_id": "u9", "item_id": "i4", "type": "dislike", "timestamp": 1_701_000_000},
    ]
    assert client.post("/v1/events", json=extra).status_code == 201
    r = app.test_cli_runner().invoke(
        main,
        args=["train", "popular", "--engine", "spark", "--holdout", "0", "--json",
              "--param", f"popular.half_life_days={json.dumps(half_life_days)}"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    loaded = get_repository(app).load_version("popular")
    want = PopularStrategy(half_life_days=half_life_days).fit(load_interactions(get_engine(app)))
    np.testing.assert_allclose(loaded.model.popularity_, want.popularity_, rtol=1e-5)
    np.testing.assert_array_equal(loaded.model.item_categories_, want.item_categories_)
    assert want.popularity_.any()


@pytest.mark.postgres
def test_train_engine_spark_refuses_clearly(make_app, tmp_path, sqlite_app):
    app = _seeded(make_app, tmp_path)
    runner = app.test_cli_runner()
    r = runner.invoke(main, args=["train", "ease", "--engine", "spark"])
    assert r.exit_code == 2 and "trains als, popular only, not ease" in r.output
    r = runner.invoke(main, args=["train", "als", "--master", "local[2]"])
    assert r.exit_code == 2 and "--engine spark only" in r.output
    r = runner.invoke(main, args=["train", "als", "--engine", "spark", "--tune"])
    assert r.exit_code == 2 and "--tune" in r.output
    r = sqlite_app.test_cli_runner().invoke(main, args=["train", "als", "--engine", "spark"])
    assert r.exit_code == 1 and "PostgreSQL" in r.output and "Traceback" not in r.output


def _get(port: int, path: str, token=None, body: dict | None = None, method: str = "POST"):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}
        | ({"Authorization": f"Bearer {token}"} if token else {}),
        method="GET" if body is None else method,
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, json.loads(r.read())


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
def test_a_spark_trained_version_is_activated_on_a_running_server(
    spark, make_app, pg_schema_url, redis_url, redis_prefix, tmp_path
):
    from recsys.models.repository import get_repository
    from tests.procs import free_port, stop_process

    app = _seeded(make_app, tmp_path)
    runner = app.test_cli_runner()
    r = runner.invoke(main, args=["train", "popular", "als", "--holdout", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    inprocess = get_repository(app).active_version("als")
    token, port = "spark-test-token", free_port()
    env = dict(os.environ)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        RECSYS_DATABASE_URL=pg_schema_url,
        RECSYS_REDIS_URL=redis_url,
        RECSYS_REDIS_PREFIX=redis_prefix,
        RECSYS_MODEL_DIR=str(tmp_path / "models"),
        RECSYS_INSTANCE_PATH=str(tmp_path / "instance"),
        RECSYS_ADMIN_TOKEN=token,
        RECSYS_PRELOAD_MODELS="true",
    )
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind",
         f"127.0.0.1:{port}", "--workers", "1", "wsgi:app"],
        cwd=ROOT, env=env, stdout=log, stderr=log,
    )  # fmt: skip
    try:
        ready, tick = time.monotonic() + 120, threading.Event()
        while True:  # poll readiness, capped (a loaded 2-core machine starts slowly)
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                if _get(port, "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < ready, "server not ready"
            tick.wait(0.1)
        # ALS serves warm users (not in the shipped default routing).
        route = {"warm_strategies": ["als", "popular"], "cold_threshold": 1}
        assert _get(port, "/v1/admin/routing", token, route, method="PATCH")[0] == 200
        _, before = _get(port, "/v1/users/u0/recommendations")
        assert before["model_versions"].get("als") == inprocess

        r = runner.invoke(
            main,
            args=["train", "als", "--engine", "spark", "--holdout", "0", "--no-activate",
                  "--param", "als.factors=8", "--json"]
        )  # fmt: skip
        assert r.exit_code == 0, r.output
        version = json.loads(r.output[r.output.index("[") :])[0]["version"]
        status, out = _get(port, "/v1/admin/models/als/activate", token, {"version": version})
        assert status == 200, out
        _, after = _get(port, "/v1/users/u0/recommendations")
        assert after["model_versions"]["als"] == version and after["items"]
        assert not after["degraded"]
        # Rollback works as for any version.
        status, out = _get(port, "/v1/admin/models/als/rollback", token, {})
        assert status == 200 and out["version"] == inprocess
    finally:
        stop_process(server, log)


def test_recsys_evaluate_compares_spark_als_with_in_process_als(spark, sqlite_app, tmp_path):
    """The shipped examples/configs/als-spark.toml through `recsys evaluate`, next to `als`:
    both learn the synthetic taste clusters far better than chance, about equally well."""
    from tests.offline.test_evaluation import clustered_data, csv_folder

    data = clustered_data(seed=3)
    folder = csv_folder(data, tmp_path / "shop")
    out = tmp_path / "report"
    r = sqlite_app.test_cli_runner().invoke(
        main,
        ["evaluate", "--data", str(folder), "--config", "als", "--config",
         os.path.join(ROOT, "examples", "configs", "als-spark.toml"), "--out", str(out),
         "--resamples", "200", "--no-progress"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    ndcg = {name: c["metrics"]["ndcg@10"] for name, c in rep["configs"].items()}
    # Chance: 10 of 160 items; a user's held-out items are in their 20-item cluster.
    assert ndcg["als"] > 0.2 and ndcg["als-spark"] > 0.2
    assert abs(ndcg["als-spark"] - ndcg["als"]) < 0.1, ndcg
