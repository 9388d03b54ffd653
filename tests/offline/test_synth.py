"""The synthetic shop (``recsys synth``, ``recsys.offline.synth``): counts, determinism and the
documented structure (docs/synth.md), on small sizes read back from the written files."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from datetime import datetime

import numpy as np
import pytest

from recsys.cli.main import main
from recsys.offline.synth import CONSUMABLE_TOPS, SIZES, SynthParams, generate, sizes

N_ITEMS, N_USERS, N_EVENTS = 3_000, 4_000, 80_000
TYPES = ("view", "click", "cart", "purchase")


def read_shop(folder: str) -> dict[str, np.ndarray]:
    """The written files as arrays (ids as ints, launch as unix seconds)."""
    with open(os.path.join(folder, "interactions.csv"), encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with open(os.path.join(folder, "items.csv"), encoding="utf-8") as f:
        items = list(csv.DictReader(f))
    return {
        "user": np.array([int(r["user_id"][1:]) for r in rows]),
        "item": np.array([int(r["item_id"][1:]) for r in rows]),
        "event": np.array([TYPES.index(r["event"]) for r in rows]),
        "value": np.array([float(r["value"]) for r in rows]),
        "ts": np.array([int(r["timestamp"]) for r in rows]),
        "item_ids": np.array([int(r["item_id"][1:]) for r in items]),
        "launch": np.array(
            [
                datetime.fromisoformat(r["launched"].replace("Z", "+00:00")).timestamp()
                for r in items
            ]
        ),
        "consumable": np.array([r["consumable"] == "yes" for r in items]),
        "top": np.array([r["categories"].split("|")[0] for r in items]),
    }


def digest(folder: str) -> str:
    h = hashlib.sha256()
    for name in ("items.csv", "interactions.csv"):
        with open(os.path.join(folder, name), "rb") as f:
            h.update(f.read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("shop"))
    # small chunks: several chunks of shoppers, as at L
    counts = generate(
        folder,
        SynthParams(items=N_ITEMS, users=N_USERS, events=N_EVENTS, seed=3),
        chunk_events=20_000,
    )
    return folder, counts, read_shop(folder)


def test_exact_counts(shop):
    _, counts, s = shop
    assert counts["items"] == N_ITEMS and counts["users"] == N_USERS
    assert counts["events"] == N_EVENTS == len(s["user"])
    assert sorted(s["item_ids"]) == list(range(N_ITEMS))
    assert len(np.unique(s["user"])) == N_USERS  # every shopper has an event
    assert s["item"].max() < N_ITEMS
    by_type = np.bincount(s["event"], minlength=4)
    assert [counts[f"events_{t}"] for t in TYPES] == by_type.tolist()
    # no two rows identical (the importer would count a duplicate once): a shopper's
    # timestamps strictly increase in file order
    same_user = s["user"][1:] == s["user"][:-1]
    assert (np.diff(s["ts"])[same_user] > 0).all()


def test_seeded_determinism(tmp_path):
    p = SynthParams(items=500, users=800, events=10_000, seed=7)
    generate(str(tmp_path / "a"), p, chunk_events=3_000)
    generate(str(tmp_path / "b"), p, chunk_events=3_000)
    generate(str(tmp_path / "c"), SynthParams(items=500, users=800, events=10_000, seed=8))
    assert digest(str(tmp_path / "a")) == digest(str(tmp_path / "b"))
    assert digest(str(tmp_path / "a")) != digest(str(tmp_path / "c"))


def test_popularity_is_heavy_tailed(shop):
    s = shop[2]
    counts = np.sort(np.bincount(s["item"], minlength=N_ITEMS))[::-1]
    top1 = counts[: N_ITEMS // 100].sum() / counts.sum()
    assert top1 > 0.2, top1  # uniform popularity would give 0.01
    assert counts[0] < 0.1 * counts.sum()  # a flattened head: no item takes a tenth
    # fitted Zipf exponent of count against rank, ranks 20 to 500 (past the flattened head)
    ranks = np.arange(20, 501)
    slope = np.polyfit(np.log(ranks), np.log(counts[19:500]), 1)[0]
    assert 0.7 < -slope < 1.3, slope


def test_no_event_before_its_items_launch(shop):
    s = shop[2]
    assert (s["launch"][s["item"]] <= s["ts"]).all()
    # launches are spread through the year, not all at the start
    start = s["launch"].min()
    late = s["launch"] > start + 180 * 86400
    assert 0.1 < late.mean() < 0.5
    # late items do get events after their launch
    assert np.isin(np.flatnonzero(late), s["item"]).mean() > 0.5


def test_shopper_activity_is_heavy_tailed(shop):
    s = shop[2]
    per_user = np.sort(np.bincount(s["user"], minlength=N_USERS))[::-1]
    top10 = per_user[: N_USERS // 10].sum() / N_EVENTS
    assert top10 > 0.4, top10  # equal activity would give 0.1
    assert per_user[0] > 20 * np.median(per_user)
    assert per_user.min() >= 1


def test_event_types_funnel_and_sessions(shop):
    s = shop[2]
    n = np.bincount(s["event"], minlength=4)
    assert n[0] > n[1] > n[2] > n[3] > 0  # view > click > cart > purchase
    assert (s["value"][s["event"] != 3] == 1).all() and (s["value"][s["event"] == 3] >= 1).all()
    # sessions: most consecutive events of a shopper are minutes apart, some are days apart
    same_user = s["user"][1:] == s["user"][:-1]
    gaps = np.diff(s["ts"])[same_user]
    assert (gaps < 30 * 60).mean() > 0.6
    assert (gaps > 86400).mean() > 0.02


def test_repeat_purchases_of_consumables(shop):
    s = shop[2]
    buy = np.flatnonzero(s["event"] == 3)
    pairs = s["user"][buy] * N_ITEMS + s["item"][buy]
    _, first = np.unique(pairs, return_index=True)
    repeat = np.ones(len(buy), dtype=bool)
    repeat[first] = False  # a purchase of an item the shopper bought before
    consumable = s["consumable"][s["item"][buy]]
    assert repeat.sum() > 100
    # consumables (a minority of the catalogue) are re-bought far more often than the rest
    assert s["consumable"].mean() < 0.5
    assert repeat[consumable].mean() > 3 * repeat[~consumable].mean()
    assert set(s["top"][s["consumable"]]) <= CONSUMABLE_TOPS


def test_shoppers_lean_to_their_categories(shop):
    s = shop[2]
    top_of_event = s["top"][s["item"]]
    names, code = np.unique(top_of_event, return_inverse=True)
    busy = np.flatnonzero(np.bincount(s["user"]) >= 30)
    shares = [
        np.bincount(code[s["user"] == u], minlength=len(names)).max() / (s["user"] == u).sum()
        for u in busy[:200]
    ]
    overall = np.bincount(code).max() / len(code)
    assert np.mean(shares) > overall + 0.15, (np.mean(shares), overall)


def test_sizes_and_overrides():
    assert sizes("m", None, None, None) == SIZES["M"] == (50_000, 200_000, 2_000_000)
    assert sizes(None, 10, None, 99) == (10, 20_000, 99)


def test_cli_files_import_into_sqlite_and_stats_agree(sqlite_app, tmp_path):
    runner = sqlite_app.test_cli_runner()
    out = str(tmp_path / "shop")
    args = ["synth", "--items", "300", "--users", "500", "--events", "6000", "--seed", "5"]
    result = runner.invoke(main, args=[*args, "--out", out, "--json"])
    assert result.exit_code == 0, result.output
    counts = json.loads(result.output)
    files = ["--interactions", f"{out}/interactions.csv", "--items", f"{out}/items.csv"]
    result = runner.invoke(main, args=["import", "csv", *files, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["written"]["events_new"] == 6000
    result = runner.invoke(main, args=["stats", "--json"])
    assert result.exit_code == 0, result.output
    st = json.loads(result.output)
    assert (st["items"], st["users"], st["events"]) == (300, 500, 6000)
    assert st["users_with_events"] == 500
    assert {t: st["events_by_type"][t] for t in TYPES} == {t: counts[f"events_{t}"] for t in TYPES}
    # re-importing adds nothing
    result = runner.invoke(main, args=["import", "csv", *files, "--json"])
    assert json.loads(result.output)["written"]["events_new"] == 0


def test_cli_rejects_fewer_events_than_shoppers(sqlite_app, tmp_path):
    runner = sqlite_app.test_cli_runner()
    args = ["synth", "--users", "10", "--events", "5", "--out", str(tmp_path / "x")]
    result = runner.invoke(main, args=args)
    assert result.exit_code == 2
    assert "every shopper has an event" in result.output
    assert not os.path.exists(tmp_path / "x" / "interactions.csv")
