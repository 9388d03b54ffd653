"""The training memory budget: ``recsys train`` estimates each strategy's peak memory
(``Strategy.estimate_cost``) before fitting and leaves out the ones that cannot fit (SQLite)."""

from __future__ import annotations

import re

import pytest

from recsys.cli.main import main
from recsys.config import get_config, update_config
from recsys.models.repository import get_repository
from recsys.offline.training import DEFAULT_BUDGET_SHARE, machine_memory_bytes
from recsys.offline.training import training_budget_bytes as budget_of
from strategies.ease import EASEStrategy
from strategies.popular import PopularStrategy
from tests.cli.test_training_cli import fill_store

N_USERS, N_ITEMS, N_EVENTS = 30, 300, 400
FAST = ["--param", "als.iterations=2", "--param", "als.factors=4"]


def _output(r) -> str:
    """stdout and stderr as the terminal shows them (click >= 8.2 interleaves them here)."""
    return r.output


@pytest.fixture
def small_store(sqlite_app):
    fill_store(sqlite_app, n_users=N_USERS, n_items=N_ITEMS, n_events=N_EVENTS)
    return sqlite_app


def test_tiny_budget_leaves_ease_out_and_trains_the_others(small_store):
    # Items = N_ITEMS + 2 (two without events). EASE's estimate is about 33 bytes x 302^2 =
    # 3 MB; popular's and ALS's are tens of kB: a 1 MiB budget separates them.
    n_items = N_ITEMS + 2
    ease_bytes, _ = EASEStrategy.estimate_cost(N_USERS, n_items, N_EVENTS)
    pop_bytes, _ = PopularStrategy.estimate_cost(N_USERS, n_items, N_EVENTS)
    assert pop_bytes < 2**20 < ease_bytes
    update_config(small_store, TRAIN_MEMORY_BUDGET_MB=1)
    runner = small_store.test_cli_runner()
    r = runner.invoke(main, args=["train", "popular", "ease", "als", "--quiet", *FAST])
    out = _output(r)
    assert r.exit_code == 0, out
    lines = [ln for ln in out.splitlines() if ln.startswith("ease: left out")]
    assert len(lines) == 1, out
    assert lines[0] in r.stderr  # the refusal goes to stderr
    # One line naming the estimate and the budget.
    estimate = re.search(r"estimated peak memory ([\d,]+) MiB", lines[0])
    assert estimate and int(estimate.group(1).replace(",", "")) == round(ease_bytes / 2**20)
    assert "training budget of 1 MiB" in lines[0] and "TRAIN_MEMORY_BUDGET_MB" in lines[0]
    active = get_repository(small_store).active_versions()
    assert set(active) == {"popular", "als"}
    assert "popular: version" in out and "als: version" in out


def test_a_budget_that_fits_trains_ease(small_store):
    update_config(small_store, TRAIN_MEMORY_BUDGET_MB=64)
    r = small_store.test_cli_runner().invoke(main, args=["train", "popular", "ease", "--quiet"])
    assert r.exit_code == 0, _output(r)
    assert "left out" not in _output(r)
    assert set(get_repository(small_store).active_versions()) == {"popular", "ease"}


def test_nothing_fits_is_an_error(small_store):
    update_config(small_store, TRAIN_MEMORY_BUDGET_MB=0.001)
    r = small_store.test_cli_runner().invoke(main, args=["train", "popular", "ease", "--quiet"])
    assert r.exit_code != 0
    out = _output(r)
    assert "popular: left out" in out and "ease: left out" in out
    assert "no strategy fits the training budget" in out
    assert get_repository(small_store).active_versions() == {}


def test_budget_setting(sqlite_app):
    assert get_config(sqlite_app).train_memory_budget_mb is None  # default: a share
    total = machine_memory_bytes()
    assert total and total > 2**27
    assert budget_of(None) == pytest.approx(DEFAULT_BUDGET_SHARE * total)
    assert budget_of(0) is None  # no budget
    assert budget_of(512) == 512 * 2**20


def test_ann_min_items_setting_gives_als_an_index(small_store):
    """``ANN_MIN_ITEMS`` reaches the fit: below the catalogue's size the version folder holds
    the checksummed index files; at the default (200,000) it holds none."""
    import os

    from strategies._arrays import ANN_FILES

    runner = small_store.test_cli_runner()
    repo = get_repository(small_store)
    r = runner.invoke(main, args=["train", "als", "--quiet", *FAST])
    assert r.exit_code == 0, _output(r)
    plain = repo.version_path("als", repo.active_version("als"))
    assert not set(ANN_FILES.values()) & set(os.listdir(plain))
    update_config(small_store, ANN_MIN_ITEMS=100)
    r = runner.invoke(main, args=["train", "als", "--quiet", *FAST])
    assert r.exit_code == 0, _output(r)
    indexed = repo.version_path("als", repo.active_version("als"))
    assert set(ANN_FILES.values()) <= set(os.listdir(indexed))
    loaded = repo.load_version("als", repo.active_version("als"))
    assert loaded.model.ann_ip_ is not None and loaded.model.ann_ip_.n == N_ITEMS + 2
