"""The ``recsys`` command's top level: its own help and a single-sourced version."""

from __future__ import annotations

import os
import tomllib
from importlib.metadata import version
from pathlib import Path

from click.testing import CliRunner

from recsys import __version__
from recsys.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def test_version_is_the_packages():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert __version__ == version("recsys") == declared
    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"recsys, version {declared}"


def test_help_describes_recsys_not_flask():
    r = CliRunner().invoke(main, ["--help"])
    assert r.exit_code == 0
    assert "recommendation-serving service" in r.output and "recsys serve" in r.output
    assert "--env-file" not in r.output and "Flask" not in r.output
    for command in ("db", "import", "train", "serve", "models", "evaluate"):
        assert f"  {command} " in r.output


def test_openapi_version_is_the_packages(sqlite_app):
    spec = sqlite_app.test_client().get("/openapi.json").get_json()
    assert spec["info"]["version"] == __version__


def test_license_and_changelog_ship():
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {__version__}" in changelog or "## Unreleased" in changelog


def test_the_files_the_cli_points_at_exist():
    """Paths computed from the package's location (moving a module must not break them), and
    all inside the package, so an installed wheel has them (scripts/ci_wheel.sh serves one)."""
    import importlib.util

    import recsys
    from recsys.cli.main import gunicorn_argv
    from recsys.offline.evaluation.datasets import RETAIL_FILE
    from recsys.offline.importers.online_retail import default_path

    argv = gunicorn_argv(("--workers", "1"))
    conf = argv[argv.index("-c") + 1]
    assert conf == "python:recsys.gunicorn_conf" and argv[-1] == "recsys.wsgi:app"
    assert "--workers" in argv
    for module in ("recsys.gunicorn_conf", "recsys.wsgi"):
        assert importlib.util.find_spec(module) is not None
    package = os.path.dirname(os.path.abspath(recsys.__file__))
    assert os.path.isfile(default_path()) and default_path() == RETAIL_FILE
    assert os.path.commonpath([package, os.path.abspath(default_path())]) == package
