"""The ``recsys`` command: a Flask CLI group built on ``create_app``.

Subcommands live with the code they drive and are registered here.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import click
from flask.cli import FlaskGroup, with_appcontext

from recsys.app import create_app
from recsys.version import __version__


class RecsysGroup(FlaskGroup):
    """Flask's CLI group (app context for every command) without Flask's own options:
    ``--app``/``--env-file``/``--debug`` locate and configure *an* app, ours is fixed, and is
    configured with ``RECSYS_*`` environment variables.

    Parameters
    ----------
    **kw
        ``FlaskGroup`` arguments (``create_app``, ``add_default_commands``...); the version
        option and the debug flag are always off.
    """

    def __init__(self, **kw):
        super().__init__(add_version_option=False, set_debug_flag=False, **kw)
        self.params = [p for p in self.params if p.name not in ("env_file", "app", "debug")]


def create_cli_app():
    """The app the CLI commands run in: ``create_app`` with the SQL statement and lock timeouts
    of batch work (``RECSYS_CLI_DB_STATEMENT_TIMEOUT_MS`` / ``_LOCK_``, default 0: none). The
    request-path timeouts (``RECSYS_DB_STATEMENT_TIMEOUT_MS``, 3 s) would cancel a bulk import's
    INSERT ... SELECT or a training read of every event. ``recsys serve`` runs ``recsys.wsgi:app``,
    which keeps the request-path ones.

    Returns
    -------
    APIFlask
        The app. A bad configuration value ends the command: one line on stderr naming the
        variable, exit status 2.
    """
    from recsys.config import ConfigError, load_settings

    try:
        settings = load_settings()
        return create_app(
            {
                "DB_STATEMENT_TIMEOUT_MS": settings.cli_db_statement_timeout_ms,
                "DB_LOCK_TIMEOUT_MS": settings.cli_db_lock_timeout_ms,
            }
        )
    except ConfigError as e:
        _config_error_exit(e)


def _config_error_exit(error: Exception) -> NoReturn:
    """A bad configuration: one line on stderr naming the variable(s), exit status 2."""
    click.echo(f"Error: {'; '.join(str(error).splitlines())}", err=True)
    sys.exit(2)


@click.group(cls=RecsysGroup, create_app=create_cli_app, add_default_commands=False)
@click.version_option(__version__, "--version", "-V", prog_name="recsys")
def main() -> None:
    """recsys: a recommendation-serving service.

    Answers "recommended for you", "similar items" and "popular" over HTTP from your events
    and catalogue, with models trained from them (popularity, content, EASE, ALS, BPR, a
    sequence model). Typical use:

    \b
      recsys db upgrade                   create or migrate the SQL store
      recsys import online-retail         load data (or: import csv ...)
      recsys train                        train and activate every model
      recsys serve --bind 0.0.0.0:8000    serve the HTTP API (gunicorn)

    Configured with RECSYS_* environment variables (RECSYS_DATABASE_URL, RECSYS_REDIS_URL,
    ...; see the README). The API is documented at /docs once serving.
    """


@main.group("db")
def db_group() -> None:
    """Schema migrations (Alembic)."""


@db_group.command("upgrade")
@click.argument("revision", default="head")
@with_appcontext
def db_upgrade(revision: str) -> None:
    """Upgrade the SQL store to REVISION (default: head)."""
    from recsys.store import get_engine, migrate

    migrate.upgrade(get_engine(), revision)
    click.echo(f"database at {revision}: {_safe_url()}")


@db_group.command("downgrade")
@click.argument("revision", default="base")
@with_appcontext
def db_downgrade(revision: str) -> None:
    """Downgrade the SQL store to REVISION (default: base, i.e. empty)."""
    from recsys.store import get_engine, migrate

    migrate.downgrade(get_engine(), revision)
    click.echo(f"database at {revision}: {_safe_url()}")


def _safe_url() -> str:
    from recsys.store import get_engine

    return get_engine().url.render_as_string(hide_password=True)


def gunicorn_argv(gunicorn_args: tuple[str, ...] = ()) -> list[str]:
    """How ``recsys serve`` runs gunicorn: the settings and the WSGI entry are modules of the
    package (``recsys.gunicorn_conf``, ``recsys.wsgi``), so an installed wheel serves from any
    folder, without the source checkout.

    Parameters
    ----------
    gunicorn_args : tuple of str
        Extra arguments for gunicorn (they override the settings module's values).

    Returns
    -------
    list of str
        The command line.
    """
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "python:recsys.gunicorn_conf",
        *gunicorn_args,
        "recsys.wsgi:app",
    ]


@main.command("serve", context_settings={"ignore_unknown_options": True})
@click.option(
    "--local-admin-token",
    is_flag=True,
    help="Without RECSYS_ADMIN_TOKEN: use instance/admin_token, created (mode 0600) and "
    "printed once on the first run, so the console at /admin/ works (make run).",
)
@click.argument("gunicorn_args", nargs=-1, type=click.UNPROCESSED)
def serve(gunicorn_args: tuple[str, ...], local_admin_token: bool = False) -> None:
    """Run the service under gunicorn (recsys.gunicorn_conf); extra args go to gunicorn."""
    from recsys.config import ConfigError, load_settings

    try:
        load_settings()  # a bad value: one line here, not a traceback from every worker
    except ConfigError as e:
        _config_error_exit(e)
    if local_admin_token:
        from recsys.cli import local_admin

        local_admin.apply(gunicorn_args, click.echo)
    argv = gunicorn_argv(gunicorn_args)
    os.execv(sys.executable, argv)


def register_commands() -> None:
    """Attach the subcommands defined in other modules. They do not import this module (they
    define plain click commands and groups), so there is no import circle through it."""
    from recsys.cli import evaluate as evaluation_cli
    from recsys.cli import imports as importers_cli
    from recsys.cli import keys as keys_cli
    from recsys.cli import models as models_cli
    from recsys.cli import synth as synth_cli
    from recsys.cli import tune as tuning_cli

    for module in (models_cli, evaluation_cli, importers_cli, tuning_cli, keys_cli, synth_cli):
        for command in module.COMMANDS:
            main.add_command(command)


register_commands()
