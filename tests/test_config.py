"""The typed settings (recsys.config): environment parsing, validation errors that name the
variable, the create_app mapping over the environment, run-time changes, and the generated
reference (docs/configuration.md) kept in step with the declaration."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from click.testing import CliRunner

from recsys import create_app
from recsys.config import ConfigError, Settings, get_config, load_settings, update_config

ROOT = Path(__file__).resolve().parent.parent


def _gen_config_docs():
    spec = importlib.util.spec_from_file_location(
        "gen_config_docs", ROOT / "scripts" / "gen_config_docs.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def sqlite_config(tmp_path) -> dict:
    return {
        "TESTING": True,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'recsys.db'}",
        "MODEL_DIR": str(tmp_path / "models"),
        "PRELOAD_MODELS": False,
    }


def test_configuration_reference_is_up_to_date():
    gen = _gen_config_docs()
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == gen.render(), "run: python scripts/gen_config_docs.py"
    for key in Settings.keys():
        assert f"`RECSYS_{key}`" in committed


def test_defaults_without_environment():
    s = load_settings()
    assert s.cache_ttl == 300 and s.admin_token is None and s.fast_cache_path is True
    assert Settings.default("CACHE_TTL") == 300
    assert load_settings({"REDIS_PREFIX": ""}).redis_prefix == "recsys"  # empty: the default


def test_environment_values_are_typed(monkeypatch):
    monkeypatch.setenv("RECSYS_CACHE_TTL", "60")
    monkeypatch.setenv("RECSYS_BATCH_MAX_DELAY_MS", "2.5")
    monkeypatch.setenv("RECSYS_ACCESS_LOG", "false")
    monkeypatch.setenv("RECSYS_FAST_MISS_PATH", "true")
    monkeypatch.setenv("RECSYS_CORS_ORIGINS", '["https://a.example", "https://b.example"]')
    monkeypatch.setenv("RECSYS_SCORING_SLOTS", "null")
    s = load_settings()
    assert s.cache_ttl == 60 and isinstance(s.cache_ttl, int)
    assert s.batch_max_delay_ms == 2.5
    assert s.access_log is False and s.fast_miss_path is True
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    assert s.scoring_slots is None


def test_one_bare_origin_is_a_list(monkeypatch):
    monkeypatch.setenv("RECSYS_CORS_ORIGINS", "https://shop.example")
    assert load_settings().cors_origins == ["https://shop.example"]


def test_secrets_and_urls_are_exact_strings(monkeypatch):
    monkeypatch.setenv("RECSYS_ADMIN_TOKEN", "0")
    monkeypatch.setenv("RECSYS_API_KEYS", "true")
    monkeypatch.setenv("RECSYS_REDIS_PREFIX", "123")
    monkeypatch.setenv("RECSYS_MODEL_DIR", "null")
    s = load_settings()
    assert s.admin_token == "0" and s.api_keys == "true"
    assert s.redis_prefix == "123" and s.model_dir == "null"


def test_bad_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("RECSYS_CACHE_TTL", "abc")
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert str(e.value).startswith("RECSYS_CACHE_TTL: Input should be a valid integer")
    assert str(e.value).endswith("(got 'abc')")


def test_value_out_of_bounds_names_the_variable(monkeypatch):
    monkeypatch.setenv("RECSYS_DEADLINE_MS", "-5")
    with pytest.raises(ConfigError, match=r"^RECSYS_DEADLINE_MS: .*greater than or equal to 0"):
        load_settings()


def test_bad_value_in_the_mapping_names_the_key(monkeypatch):
    with pytest.raises(ConfigError, match=r"^ACCESS_LOG: .*valid boolean"):
        load_settings({"ACCESS_LOG": "maybe"})


def test_mapping_overrides_the_environment(monkeypatch, sqlite_config):
    monkeypatch.setenv("RECSYS_CACHE_TTL", "42")
    monkeypatch.setenv("RECSYS_DEADLINE_MS", "100")
    assert load_settings({"CACHE_TTL": 7}).cache_ttl == 7
    app = create_app({**sqlite_config, "CACHE_TTL": 7})
    config = get_config(app)
    assert config.cache_ttl == 7 and config.deadline_ms == 100
    assert app.config["CACHE_TTL"] == 7 and app.config["TESTING"] is True  # mirrored


def test_unknown_key_in_the_mapping_is_an_error(sqlite_config):
    with pytest.raises(ConfigError, match="CACHE_TTLL: unknown configuration key"):
        load_settings({"CACHE_TTLL": 5})
    with pytest.raises(ConfigError, match="NO_SUCH_KEY: unknown configuration key"):
        create_app({**sqlite_config, "NO_SUCH_KEY": 1})


def test_instance_defaults_fill_unset_stores(monkeypatch, tmp_path):
    monkeypatch.setenv("RECSYS_INSTANCE_PATH", str(tmp_path / "inst"))
    app = create_app({"TESTING": True, "PRELOAD_MODELS": False})
    config = get_config(app)
    assert config.database_url == "sqlite:///" + str(tmp_path / "inst" / "recsys.db")
    assert config.model_dir == str(tmp_path / "inst" / "models")


def test_run_time_change_is_explicit_and_validated(sqlite_config):
    app = create_app(sqlite_config)
    with pytest.raises(ConfigError, match="update_config"):
        app.config["FAST_CACHE_PATH"] = False  # never silently ignored
    with pytest.raises(ConfigError):
        app.config.update(CACHE_TTL=1)
    assert get_config(app).fast_cache_path is True
    update_config(app, FAST_CACHE_PATH=False, deadline_ms=80)
    assert get_config(app).fast_cache_path is False and app.config["FAST_CACHE_PATH"] is False
    assert get_config(app).deadline_ms == 80
    with pytest.raises(ConfigError, match="^CACHE_TTL: "):
        update_config(app, CACHE_TTL="soon")
    with pytest.raises(ConfigError, match="unknown configuration key"):
        update_config(app, NOPE=1)
    assert get_config(app).cache_ttl == 300
    app.config["SERVER_NAME"] = "shop.example"  # Flask's own keys stay writable


def test_cli_bad_value_is_one_line_and_exit_2(monkeypatch):
    from recsys.cli.main import main

    monkeypatch.setenv("RECSYS_CACHE_TTL", "abc")
    r = CliRunner().invoke(main, ["db", "upgrade"])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "RECSYS_CACHE_TTL: Input should be a valid integer" in lines[0]
    assert "Traceback" not in r.output


def test_serve_checks_the_configuration_before_gunicorn(monkeypatch):
    from recsys.cli.main import main

    monkeypatch.setenv("RECSYS_ACCESS_LOG", "maybe")
    r = CliRunner().invoke(main, ["serve"])
    assert r.exit_code == 2
    assert r.stderr.strip().startswith("Error: RECSYS_ACCESS_LOG: Input should be a valid boolean")
