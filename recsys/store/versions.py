"""Shared versions: counters in the ``settings`` table that every process polls.

``config_version`` (serving configuration and profile), ``catalog_version`` (what is
recommendable), ``cache_epoch`` (every cached list) and ``items_version`` (item display data).
A change is committed together with its bump, so every worker sees both at once. Here, below
``recsys.serving.settings_store`` (which polls them) and everything that bumps them (admin edits,
model and profile activations, the catalogue API), so none of those imports another to bump.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from recsys.store.models import Setting

CONFIG_VERSION = "config_version"
CATALOG_VERSION = "catalog_version"
CACHE_EPOCH = "cache_epoch"
# Bumped by every item edit (display data included): refreshes catalogue snapshots, but is not
# part of any cache key, so a title or price edit invalidates no cached list.
ITEMS_VERSION = "items_version"
VERSION_KEYS = (CONFIG_VERSION, CATALOG_VERSION, CACHE_EPOCH, ITEMS_VERSION)


@dataclass(frozen=True)
class Versions:
    """The shared versions one poll read: ``config``, ``catalog``, ``epoch`` (the cache epoch)
    and ``items`` (0: never bumped).
    """

    config: int = 0
    catalog: int = 0
    epoch: int = 0
    items: int = 0


def insert_ignore(s: Session, model, values: dict, key: str) -> None:
    """INSERT ... ON CONFLICT DO NOTHING on PostgreSQL and SQLite (row creation races).

    Parameters
    ----------
    s : Session
        The session (the caller's transaction).
    model : type
        The mapped class inserted into.
    values : dict
        Column name -> value of the row.
    key : str
        The unique column whose conflict means the row already exists.

    Returns
    -------
    None
    """
    from recsys.store.db import dialect_insert

    s.execute(
        dialect_insert(s, model).values(**values).on_conflict_do_nothing(index_elements=[key])
    )


def bump(s: Session, key: str = CONFIG_VERSION, reason: str = "") -> int:
    """Increment shared version ``key`` inside the caller's transaction.

    The row is locked (``FOR UPDATE``) so concurrent changes serialise; the caller's commit
    publishes the change and the bump together.

    Parameters
    ----------
    s : Session
        The session (the caller commits).
    key : str, optional
        One of ``VERSION_KEYS``; the row is created at 0 when missing.
    reason : str, optional
        Why it changed, stored with the version (truncated to 200 characters).

    Returns
    -------
    int
        The new version.
    """
    insert_ignore(s, Setting, {"key": key, "value": {"version": 0}}, "key")
    row = s.execute(select(Setting).where(Setting.key == key).with_for_update()).scalar_one()
    version = int((row.value or {}).get("version", 0)) + 1
    row.value = {"version": version, "reason": reason[:200]}
    return version


def lock_config(s: Session) -> None:
    """Serialise configuration edits: lock the config_version row until the transaction ends.

    Parameters
    ----------
    s : Session
        The session whose transaction holds the lock.

    Returns
    -------
    None
    """
    insert_ignore(s, Setting, {"key": CONFIG_VERSION, "value": {"version": 0}}, "key")
    s.execute(select(Setting).where(Setting.key == CONFIG_VERSION).with_for_update()).scalar_one()
