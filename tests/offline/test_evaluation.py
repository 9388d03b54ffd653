"""recsys evaluate: configurations, the runner through the request path, the report folder."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from features.interactions import InteractionData
from recsys.offline.evaluation import evaluate
from recsys.offline.evaluation.configs import ConfigError, config_from_dict, load_config
from recsys.offline.evaluation.report import write_report

ML100K = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "datasets", "ml-100k")


def clustered_data(seed: int = 0) -> InteractionData:
    """400 users in 8 taste clusters over 160 items: item-item models can find the clusters,
    global popularity cannot."""
    rng = np.random.default_rng(seed)
    n_users, n_items, n_clusters = 400, 160, 8
    per = n_items // n_clusters
    # Item popularity skew inside each cluster, so popularity is not uniform.
    skew = 1.0 / np.arange(1, per + 1) ** 0.7
    skew /= skew.sum()
    users, items, ts = [], [], []
    for u in range(n_users):
        c = u % n_clusters
        k = rng.integers(6, 25)
        own = rng.choice(per, size=min(k, per), replace=False, p=skew) + c * per
        noise = rng.choice(n_items, size=2, replace=False)
        for t, i in enumerate(np.unique(np.r_[own, noise])):
            users.append(f"u{u}")
            items.append(f"i{i}")
            ts.append(1_600_000_000 + u * 1000 + t)
    return InteractionData.from_arrays(
        users, items, "purchase", timestamps=ts, all_item_ids=[f"i{i}" for i in range(n_items)]
    )


@pytest.fixture(scope="module")
def synthetic_report():
    data = clustered_data()
    return evaluate(
        ["popular", "ease", "popular"],
        data,
        split="stratified-item",
        k=10,
        seed=42,
        resamples=500,
    )


def test_report_shape(synthetic_report):
    r = synthetic_report
    assert list(r["configs"]) == ["popular", "ease", "popular#2"]
    m = r["configs"]["ease"]["metrics"]
    for key in (
        "precision@10",
        "recall@10",
        "ndcg@10",
        "map@10",
        "hit_rate@10",
        "mrr@10",
        "coverage@10",
        "novelty@10",
    ):
        assert key in m and np.isfinite(m[key])
    lo, hi = r["configs"]["ease"]["intervals"]["ndcg@10"]
    assert lo <= m["ndcg@10"] <= hi
    segs = r["configs"]["ease"]["segments"]
    assert set(segs["route"]) <= {"cold", "warm"}
    assert sum(s["n_users"] for s in segs["route"].values()) == r["split"]["n_test_users"]
    assert sum(s["n_users"] for s in segs["history"].values()) == r["split"]["n_test_users"]
    assert set(segs["history"]) <= {"0", "1-4", "5-19", "20+"}
    assert r["timings"]["train_s"]["ease"] >= 0
    # Models are trained once per (strategy, params) and shared across configurations.
    assert list(r["timings"]["train_s"]) == ["popular", "ease"]


def test_clearly_worse_configuration_is_flagged(synthetic_report):
    c = next(
        c for c in synthetic_report["comparisons"] if c["b"] == "ease" and c["metric"] == "ndcg@10"
    )
    assert c["significant"] and c["diff"] > 0.05
    assert c["verdict"].startswith("ease is better than popular on ndcg@10")


def test_same_configuration_twice_is_no_difference(synthetic_report):
    aa = [
        c for c in synthetic_report["comparisons"] if (c["a"], c["b"]) == ("popular", "popular#2")
    ]
    assert len(aa) == 8  # six ranking metrics, novelty and coverage
    for c in aa:
        assert not c["significant"], c["verdict"]
        assert c["verdict"].startswith("no significant difference")


def test_report_folder(tmp_path, synthetic_report):
    paths = write_report(synthetic_report, str(tmp_path))
    with open(paths["json"]) as f:
        stored = json.load(f)
    assert stored["configs"]["ease"]["metrics"]["ndcg@10"] == pytest.approx(
        synthetic_report["configs"]["ease"]["metrics"]["ndcg@10"]
    )
    assert {"configs", "comparisons", "timings"} <= set(stored)
    md = open(paths["summary"]).read()
    assert "ease is better than popular on ndcg@10" in md
    for name in ("metrics.png", "history_ndcg_at_10.png"):
        with open(tmp_path / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_config_files_and_names(tmp_path):
    p = tmp_path / "rrf.toml"
    p.write_text(
        'description = "ease + als by rank"\n'
        '[serving.routing]\nblend = "rrf"\nwarm_strategies = ["ease", "als"]\n'
        "[serving.strategies.als]\nweight = 0.5\n[params.ease]\nl2 = 100.0\n"
    )
    cfg = load_config(str(p))
    assert cfg.name == "rrf" and cfg.params == {"ease": {"l2": 100.0}}
    j = tmp_path / "j.json"
    j.write_text(json.dumps({"name": "jj", "serving": {"routing": {"cold_threshold": 2}}}))
    assert load_config(str(j)).name == "jj"
    single = load_config("ease")
    assert single.serving["routing"]["warm_strategies"] == ["ease"]
    assert load_config("default").serving == {}
    with pytest.raises(ConfigError, match="neither a file"):
        load_config("nope")
    with pytest.raises(ConfigError, match="unknown keys"):
        config_from_dict({"serve": {}})
    with pytest.raises(ConfigError, match="blend"):
        config_from_dict({"serving": {"routing": {"blend": "magic"}}})
    bad = tmp_path / "bad.toml"
    bad.write_text("[serving\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(str(bad))


def test_cli_bad_input_is_a_clean_usage_error(sqlite_app, tmp_path):
    from recsys.cli.main import main

    runner = sqlite_app.test_cli_runner()
    r = runner.invoke(main, ["evaluate", "--config", "nope", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "neither a file" in r.output and "Traceback" not in r.output
    r = runner.invoke(
        main,
        [
            "evaluate",
            "--data",
            str(tmp_path / "missing"),
            "--config",
            "popular",
            "--out",
            str(tmp_path),
        ],
    )
    assert r.exit_code == 2 and "no such file" in r.output
    # A misspelt strategy must not silently shrink the tuner's search.
    r = runner.invoke(
        main,
        ["evaluate", "--config", "tuned", "--tune-strategies", "popular,esae", "--out",
         str(tmp_path)],
    )  # fmt: skip
    assert r.exit_code == 2 and "unknown strategies 'esae'" in r.output and "known" in r.output
    # ... and must not be silently ignored when no configuration is tuned.
    r = runner.invoke(
        main,
        ["evaluate", "--config", "ease", "--tune-strategies", "ease,sequence", "--out",
         str(tmp_path)],
    )  # fmt: skip
    assert r.exit_code == 2 and "only with --config tuned" in r.output


def csv_folder(data: InteractionData, folder):
    """``data`` as a folder in the importers' generic CSV format (``--data`` accepts it)."""
    folder.mkdir()
    with open(folder / "interactions.csv", "w") as f:
        f.write("user_id,item_id,event,timestamp\n")
        for u, i, t in zip(data.user_idx, data.item_idx, data.ts, strict=True):
            f.write(f"{data.users.ids[u]},{data.items.ids[i]},purchase,{t}\n")
    return folder


def test_cli_tune_strategies_limit_what_a_tuned_configuration_searches(sqlite_app, tmp_path):
    """--tune-strategies reaches the tuner: the profile searches and serves those alone (this
    is how an analyst lets the search weigh an opt-in strategy such as sequence)."""
    from recsys.cli.main import main

    data = clustered_data(seed=2)
    folder = csv_folder(data, tmp_path / "shop")
    out = tmp_path / "report"
    r = sqlite_app.test_cli_runner().invoke(
        main,
        ["evaluate", "--data", str(folder), "--split", "time", "--config", "tuned", "--config",
         "popular", "--tune-strategies", "ease, popular", "--tune-budget", "20s", "--out",
         str(out), "--resamples", "200", "--no-progress"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    profile = json.loads((out / "report.json").read_text())["configs"]["tuned"]["profile"]
    assert set(profile["trace"]["params"]) == {"ease", "popular"}
    served = {s for route in profile["routes"] for s in route["weights"]}
    assert served and served <= {"ease", "popular"}


@pytest.mark.ml100k
@pytest.mark.slow
def test_ml100k_popularity_row_and_ease_through_the_cli(sqlite_app, tmp_path):
    if not os.path.exists(os.path.join(ML100K, "u.data")):
        pytest.skip("MovieLens 100K not present at ../shared/datasets/ml-100k")
    from recsys.cli.main import main

    # Recommenders' baseline counts ratings with no time decay; 0 turns our decay off.
    cfg = tmp_path / "popular-count.toml"
    cfg.write_text(
        'name = "popular-count"\n[serving.routing]\ncold_strategies = ["popular"]\n'
        'warm_strategies = ["popular"]\n[params.popular]\nhalf_life_days = 0\n'
    )
    out = tmp_path / "report"
    r = sqlite_app.test_cli_runner().invoke(
        main,
        [
            "evaluate",
            "--data",
            ML100K,
            "--split",
            "stratified-item",
            "--seed",
            "42",
            "--k",
            "10",
            "--config",
            str(cfg),
            "--config",
            "ease",
            "--out",
            str(out),
            "--resamples",
            "500",
            "--no-progress",
        ],
    )
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    pop = rep["configs"]["popular-count"]["metrics"]
    # Published most-popular row on this exact split (BENCHMARKS.md, section D): 0.2522.
    assert pop["ndcg@10"] == pytest.approx(0.2522, abs=0.01)
    assert rep["configs"]["ease"]["metrics"]["ndcg@10"] > 0.44
    assert "ease is better than popular-count on ndcg@10" in r.output


def test_cli_on_a_generic_csv_folder(sqlite_app, tmp_path):
    """--data accepts the importers' generic CSV format; every split runs end to end."""
    from recsys.cli.main import main

    data = clustered_data(seed=1)
    folder = csv_folder(data, tmp_path / "shop")
    for split in ("time", "random-user", "stratified-item", "leave-last-out"):
        out = tmp_path / split
        r = sqlite_app.test_cli_runner().invoke(
            main,
            [
                "evaluate",
                "--data",
                str(folder),
                "--split",
                split,
                "--config",
                "popular",
                "--config",
                "ease",
                "--out",
                str(out),
                "--resamples",
                "200",
                "--no-progress",
            ],
        )
        assert r.exit_code == 0, r.output
        rep = json.loads((out / "report.json").read_text())
        assert rep["split"]["name"] == split and rep["split"]["n_test_users"] > 0
        assert rep["dataset"]["n_events"] == len(data)


@pytest.mark.postgres
@pytest.mark.redis
def test_cli_on_the_current_store(served_app, tmp_path):
    """Without --data the evaluation reads the SQL store
    (recsys.store.training_data.load_interactions)."""
    from recsys.cli.main import main

    out = tmp_path / "store"
    r = served_app.test_cli_runner().invoke(
        main,
        [
            "evaluate",
            "--split",
            "leave-last-out",
            "--config",
            "popular",
            "--config",
            "ease",
            "--out",
            str(out),
            "--resamples",
            "200",
            "--no-progress",
        ],
    )
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    # servicekit's store: 7 users with 3-5 purchases each; leave-last-out tests all of them.
    assert rep["dataset"]["n_users"] == 7 and rep["split"]["n_test_users"] == 7
    assert set(rep["configs"]) == {"popular", "ease"}


def test_relevant_new_drops_repeat_purchases():
    # Each user buys a, b early, then a again (a repeat) and one new item late.
    users, items, ts = [], [], []
    for u in range(60):
        for t, it in enumerate(["a", "b", "a", f"n{u % 7}"]):
            users.append(f"u{u}")
            items.append(it)
            ts.append(1_000 * t + u)
    data = InteractionData.from_arrays(users, items, "purchase", timestamps=ts)
    kw = dict(split="time", k=5, resamples=100, fraction=0.5)
    every = evaluate(["popular"], data, relevant="all", **kw)
    new = evaluate(["popular"], data, relevant="new", **kw)
    assert every["split"]["n_relevant"] == 120  # "a" again and the new item, per user
    assert new["split"]["n_relevant"] == 60  # the new item only
