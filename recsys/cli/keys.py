"""``recsys keys``: add, revoke and list API keys at run time (recsys.serving.keystore).

A key added or revoked here is accepted or refused by every worker of every server within one
``CONFIG_POLL_SECONDS``, without a restart. ``RECSYS_API_KEYS`` keys are listed (by id) and can
be revoked here too.
"""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup, with_appcontext

from recsys.cli.util import echo_json
from recsys.ops import audit
from recsys.serving import keystore
from recsys.store import session_scope
from recsys.web.auth import key_table


@click.group("keys", cls=AppGroup)
def keys_group() -> None:
    """API keys: add, revoke, list (no restart needed)."""


@keys_group.command("add")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice(keystore.SCOPES),
    help="A scope of the key (repeat for several).",
)
@click.option("--label", default="", help="Who or what the key is for.")
@with_appcontext
def add(scopes: tuple[str, ...], label: str) -> None:
    """Create a key; it is printed this once (only its SHA-256 is stored)."""
    try:
        with session_scope() as s:
            out = keystore.add_key(s, scopes, label)
            after = {k: v for k, v in out.items() if k != "key"}
            audit.record(s, "cli", "api_key.create", out["id"], None, after)
    except keystore.KeyStoreError as e:
        raise click.ClickException(str(e)) from None
    echo_json(out)


@keys_group.command("revoke")
@click.argument("ident")
@with_appcontext
def revoke(ident: str) -> None:
    """Revoke a key: IDENT is its id (``recsys keys list``) or the key itself."""
    try:
        with session_scope() as s:
            out = keystore.revoke_key(s, ident, key_table(current_app).config)
            audit.record(s, "cli", "api_key.revoke", out["id"], None, out)
    except keystore.KeyStoreError as e:
        raise click.ClickException(str(e)) from None
    echo_json(out)


@keys_group.command("list")
@with_appcontext
def list_() -> None:
    """The keys in force (ids, source, scopes, labels; never the keys)."""
    with session_scope() as s:
        echo_json(keystore.list_keys(s, key_table(current_app).config))


COMMANDS = [keys_group]
