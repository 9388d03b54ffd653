"""``recsys serve --local-admin-token`` (what ``make run`` runs): a token in instance/ (0600),
printed once with the console's URL, unless RECSYS_ADMIN_TOKEN is set; the console then works."""

from __future__ import annotations

import os
import stat

import pytest
from click.testing import CliRunner

from recsys.cli.main import main


@pytest.fixture
def serve(monkeypatch, tmp_path):
    """``recsys serve`` with gunicorn not started (the exec is recorded instead)."""
    monkeypatch.setenv("RECSYS_INSTANCE_PATH", str(tmp_path / "instance"))
    # setenv first, so that teardown removes the token `serve` puts in os.environ (a bare
    # delenv of an absent variable restores nothing, and the token leaked into later tests).
    monkeypatch.setenv("RECSYS_ADMIN_TOKEN", "-")
    monkeypatch.delenv("RECSYS_ADMIN_TOKEN")
    execs = []
    monkeypatch.setattr(os, "execv", lambda path, argv: execs.append(argv))
    monkeypatch.setattr(os, "chdir", lambda path: None)

    def run(*args):
        r = CliRunner().invoke(main, ["serve", *args])
        assert r.exit_code == 0, r.output
        assert execs and "--local-admin-token" not in execs[-1]
        return r.output

    return run


def test_first_run_creates_and_prints_the_token_once(serve, tmp_path):
    out = serve("--local-admin-token", "--bind", "127.0.0.1:8123")
    path = tmp_path / "instance" / "admin_token"
    token = path.read_text().strip()
    assert len(token) >= 40 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "http://127.0.0.1:8123/admin/" in out and token in out
    assert os.environ["RECSYS_ADMIN_TOKEN"] == token  # what the workers will read
    os.environ.pop("RECSYS_ADMIN_TOKEN")
    again = serve("--local-admin-token", "--bind=0.0.0.0:9000")
    assert token not in again and str(path) in again and "http://127.0.0.1:9000/admin/" in again
    assert os.environ["RECSYS_ADMIN_TOKEN"] == token and path.read_text().strip() == token


def test_a_token_in_the_environment_wins(serve, tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_ADMIN_TOKEN", "mine")
    out = serve("--local-admin-token")
    assert "RECSYS_ADMIN_TOKEN" in out
    assert not (tmp_path / "instance" / "admin_token").exists()
    assert os.environ["RECSYS_ADMIN_TOKEN"] == "mine"


def test_without_the_flag_nothing_is_written(serve, tmp_path):
    serve("--bind", "127.0.0.1:8124")
    assert not (tmp_path / "instance" / "admin_token").exists()


def test_the_console_works_with_the_local_token(tmp_path, monkeypatch):
    from recsys.app import create_app
    from recsys.cli.local_admin import ensure_token

    token, created = ensure_token(str(tmp_path))
    assert created and ensure_token(str(tmp_path)) == (token, False)
    monkeypatch.setenv("RECSYS_ADMIN_TOKEN", token)
    app = create_app(
        {"TESTING": True, "DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}", "PRELOAD_MODELS": False}
    )
    page = app.test_client().get("/admin/")
    assert page.status_code == 200 and b"Admin is disabled" not in page.data
    r = app.test_client().get("/admin/ui/whoami", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
