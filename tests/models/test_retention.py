"""``recsys models prune`` and the MODEL_KEEP_VERSIONS retention setting (real PostgreSQL)."""

from __future__ import annotations

import json
import os

import pytest

from recsys.cli.main import main
from recsys.config import update_config
from recsys.models.repository import PROFILE_KIND, ModelRepository, get_repository, use_repository
from recsys.store import get_engine, session_scope
from recsys.store.models import AuditLog
from recsys.store.training_data import load_interactions
from tests.cli.test_training_cli import fill_store
from tests.models.test_repository import CountStrategy, resolver

pytestmark = pytest.mark.postgres


@pytest.fixture
def repo_app(app):
    fill_store(app, n_events=120)
    repo = ModelRepository(
        app.config["MODEL_DIR"], app.extensions["recsys.sessionmaker"], resolver=resolver
    )
    use_repository(app, repo)
    return app


def _versions(app, n: int, activate: bool = True) -> list[str]:
    repo = get_repository(app)
    data = load_interactions(get_engine(app))
    return [repo.save_version(CountStrategy().fit(data), data, activate=activate) for _ in range(n)]


def _stored(app) -> list[str]:
    return [v["version"] for v in get_repository(app).list_versions("counts")]


def test_prune_keeps_newest_active_and_rollback_target(repo_app):
    repo = get_repository(repo_app)
    v = _versions(repo_app, 5)  # v[4] active, v[3] the rollback target
    assert repo.rollback("counts") == v[3]  # now v[3] active, v[2] the rollback target
    paths = {x["version"]: x["path"] for x in repo.list_versions("counts")}
    runner = repo_app.test_cli_runner()

    r = runner.invoke(main, args=["models", "prune", "--keep", "1", "--dry-run", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["dry_run"] is True and [p["version"] for p in out["pruned"]] == [v[1], v[0]]
    assert _stored(repo_app) == sorted(v)  # nothing deleted

    r = runner.invoke(main, args=["models", "prune", "--keep", "1", "--actor", "ops"])
    assert r.exit_code == 0, r.output
    assert "deleted 2 version(s)" in r.output
    assert _stored(repo_app) == sorted([v[2], v[3], v[4]])  # newest, active, rollback target
    assert not os.path.exists(paths[v[0]]) and not os.path.exists(paths[v[1]])
    assert all(os.path.isdir(paths[x]) for x in v[2:])
    assert repo.active_version("counts") == v[3]
    assert repo.rollback("counts") == v[2]  # the target still works
    with session_scope(repo_app) as s:
        row = s.query(AuditLog).filter_by(action="model.prune").one()
        assert (row.actor, row.target, row.before) == ("ops", "counts", {"versions": [v[1], v[0]]})

    # After that rollback v[3] is neither newest, active nor the rollback target (v[1], gone:
    # a further rollback says so): it goes; then nothing more.
    r = runner.invoke(main, args=["models", "prune", "--keep", "1"])
    assert r.exit_code == 0 and f"deleted counts/{v[3]}" in r.output
    assert _stored(repo_app) == sorted([v[2], v[4]])
    r = runner.invoke(main, args=["models", "prune", "--keep", "1"])
    assert r.exit_code == 0 and "deleted 0 version(s)" in r.output


def test_prune_needs_a_keep(repo_app):
    runner = repo_app.test_cli_runner()
    r = runner.invoke(main, args=["models", "prune"])
    assert r.exit_code == 2 and "--keep" in r.output
    r = runner.invoke(main, args=["models", "prune", "--keep", "0"])
    assert r.exit_code == 2
    update_config(repo_app, MODEL_KEEP_VERSIONS=3)  # the setting is the default
    _versions(repo_app, 4)
    r = runner.invoke(main, args=["models", "prune", "--dry-run"])
    assert r.exit_code == 0 and "would delete 1 version(s)" in r.output


def test_retention_setting_prunes_after_training(repo_app):
    update_config(repo_app, MODEL_KEEP_VERSIONS=2)
    runner = repo_app.test_cli_runner()
    for _ in range(4):
        r = runner.invoke(main, args=["train", "counts", "--quiet"])
        assert r.exit_code == 0, r.output
    assert "pruned counts/" in r.output
    repo = get_repository(repo_app)
    stored = sorted(repo.list_versions("counts"), key=lambda x: x["created_at"])
    # The two newest: the newest is active, the one before it is the rollback target.
    assert len(stored) == 2
    assert repo.active_version("counts") == stored[1]["version"]
    assert repo.rollback_target("counts") == stored[0]["version"]


def test_prune_keeps_the_models_of_the_active_serving_profile(repo_app):
    from recsys.models.profile import ServingProfile, save_profile

    repo = get_repository(repo_app)
    v = _versions(repo_app, 4)  # v[3] active, v[2] the rollback target
    profile = ServingProfile(
        routes=[{"name": "all", "max_history": None, "weights": {"popular": 1.0}}],
        models={"counts": v[0]},  # pins an old version
    )
    with repo_app.app_context():
        pv = save_profile(repo, profile)
    repo.activate(PROFILE_KIND, pv)  # the profile row only: counts keeps v[3] active
    r = repo_app.test_cli_runner().invoke(main, args=["models", "prune", "counts", "--keep", "1"])
    assert r.exit_code == 0, r.output
    assert _stored(repo_app) == sorted([v[0], v[2], v[3]])  # only v[1] went
    assert repo.active_version(PROFILE_KIND) == pv
