"""The catalogue snapshot is loaded in gunicorn's master and inherited by the workers, so a
worker's first request does not read the whole catalogue (issue 29: the first similar-items
call took 4.3 s at 50k items, all of it that read)."""

from __future__ import annotations

import gc
import logging
import os
from types import SimpleNamespace

import pytest

from recsys.ops.lifecycle import run_after_fork_hooks
from recsys.serving.catalog import CatalogStore, get_catalog_store

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def reads(monkeypatch):
    """Every catalogue read from SQL: ``(versions, full)``."""
    seen: list[tuple] = []
    original = CatalogStore._refresh

    def spy(self, key):
        seen.append((key, self._watermark is None))
        return original(self, key)

    monkeypatch.setattr(CatalogStore, "_refresh", spy)
    return seen


def master_ready(app) -> None:
    """gunicorn's ``when_ready`` hook on ``app``, as the master runs it before forking."""
    # Importing the configuration sets PROMETHEUS_MULTIPROC_DIR (and thread counts) in
    # os.environ, as it must in a server; here it would switch every later test's /metrics to
    # the multiprocess files.
    saved = dict(os.environ)
    try:
        from recsys import gunicorn_conf
    finally:
        os.environ.clear()
        os.environ.update(saved)

    server = SimpleNamespace(
        cfg=SimpleNamespace(preload_app=True),
        app=SimpleNamespace(wsgi=lambda: app),
        log=logging.getLogger("test.gunicorn"),
    )
    try:
        gunicorn_conf.when_ready(server)
    finally:
        gc.unfreeze()


def test_master_preloads_catalogue_and_filters_and_a_worker_keeps_them(served_app, reads):
    from recsys.models.runtime import get_runtime

    store = get_catalog_store(served_app)
    store.reset()
    master_ready(served_app)
    assert [full for _, full in reads] == [True]  # one full read, in the master
    catalog, version = store._catalog, store.loaded_version
    assert len(catalog) > 0
    runtime = get_runtime(served_app)
    for name in runtime.active_versions():  # each loaded model's filter is built
        assert runtime.get(name).items in catalog._allowed_cache

    run_after_fork_hooks(served_app)  # now "in a worker"
    assert store._catalog is catalog and store.loaded_version == version
    client = served_app.test_client()
    r = client.get("/v1/items/i1/similar?n=3")
    assert r.status_code == 200, r.get_json()
    r = client.get("/v1/users/u6/recommendations?n=3")
    assert r.status_code == 200, r.get_json()
    assert len(reads) == 1  # no read in the worker
    assert store._catalog is catalog


def test_a_worker_reads_only_changed_items_after_the_master_snapshot(served_app, reads):
    from tests.servicekit import CATS

    store = get_catalog_store(served_app)
    store.reset()
    master_ready(served_app)
    run_after_fork_hooks(served_app)
    client = served_app.test_client()
    r = client.put("/v1/items/i1", json={"categories": CATS[1], "available": False})
    assert r.status_code == 200, r.get_json()
    assert client.get("/v1/items/i2/similar?n=3").status_code == 200
    assert [full for _, full in reads] == [True, False]  # the master's, then a delta
    assert not store._catalog.is_available("i1")


def test_master_starts_without_a_catalogue_when_the_database_is_down(served_app, monkeypatch):
    from recsys.serving import catalog

    def down(app):
        raise RuntimeError("database down")

    monkeypatch.setattr(catalog, "preload", down)
    store = get_catalog_store(served_app)
    store.reset()
    master_ready(served_app)  # logs a warning, does not raise
    assert store.loaded_version is None


def test_a_worker_reads_its_settings_before_its_first_request(served_app):
    from recsys.serving.settings_store import get_settings
    from recsys.serving.warm import warm_worker

    run_after_fork_hooks(served_app)
    settings = get_settings(served_app)
    assert not settings.holds_versions
    assert warm_worker(served_app) is True
    assert settings.holds_versions


def test_a_worker_starts_unwarmed_when_the_database_is_down(served_app, monkeypatch):
    from recsys.serving import pipeline
    from recsys.serving.warm import warm_worker

    def down(self):
        raise RuntimeError("database down")

    monkeypatch.setattr(pipeline.RecommendationPipeline, "snapshot", down)
    assert warm_worker(served_app) is False
