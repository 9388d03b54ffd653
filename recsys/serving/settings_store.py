"""Admin-editable serving configuration, stored in SQL and shared by every worker and server.

Storage:

* ``strategy_settings`` rows: per strategy ``enabled`` and ``weight``. The row is shared with the
  model runtime (which keeps ``load_mode`` there and may create rows with column defaults), so
  only the fields an admin actually set count as overrides: their names are kept in
  ``params["set"]``; the others take the shipped default
  (``recsys.core.recommender.DEFAULT_CONFIG``).
* ``settings`` row ``routing``: the admin's routing overrides (same keys as the ``routing``
  part of ``ServingConfig``).
* ``settings`` rows ``config_version``, ``catalog_version``, ``cache_epoch``: shared integers
  ``{"version": n, "reason": "..."}``. Every configuration change bumps ``config_version`` in
  the same transaction; ``PUT /v1/items`` bumps ``catalog_version`` when availability or
  categories change (and ``items_version`` on every edit); ``cache_epoch`` is bumped when a
  per-user cache invalidation could not be written (Redis down), so no pre-outage entry is
  ever served.

Each process polls the three versions with one small query at most every
``CONFIG_POLL_SECONDS`` (0.5 s by default) and reloads the configuration only when
``config_version`` moved, so a change reaches every worker of every server within a second.

Over 500 lines only through the numpy-style docstrings of its public API (about 340
lines without them): the code is one unit, not split for length.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, current_app
from sqlalchemy import select
from sqlalchemy.orm import Session

from recsys.config import get_config
from recsys.core.config import DEFAULT_CONFIG, ServingConfig
from recsys.errors import RateLimitedLog
from recsys.ops.polling import BackgroundPoll
from recsys.store.models import Setting, StrategySetting
from recsys.store.versions import (
    CACHE_EPOCH,
    CATALOG_VERSION,
    CONFIG_VERSION,
    ITEMS_VERSION,
    VERSION_KEYS,
    Versions,
    bump,
    insert_ignore,
    lock_config,
)
from strategies import STRATEGY_NAMES

log = logging.getLogger(__name__)
# The configuration poll failing (an outage fails every poll, several a second): at most one
# line a minute, as the model and experiment polls.
POLL_LOG_EVERY_S = 60.0

ROUTING = "routing"
STRATEGY_FIELDS = ("enabled", "weight")


def read_overrides(s: Session) -> dict[str, Any]:
    """The admin's overrides as a ServingConfig dict (only what an admin set).

    Parameters
    ----------
    s : Session
        The session read from.

    Returns
    -------
    dict
        ``{"strategies": {name: {field: value}}, "routing": {...}}``, each key only when
        something is set (empty: no override).
    """
    strategies: dict[str, dict[str, Any]] = {}
    for row in s.scalars(select(StrategySetting)):
        if row.name not in STRATEGY_NAMES:
            continue
        set_fields = (row.params or {}).get("set") or []
        over = {f: getattr(row, f) for f in STRATEGY_FIELDS if f in set_fields}
        if over:
            strategies[row.name] = over
    routing_row = s.get(Setting, ROUTING)
    routing = dict(routing_row.value) if routing_row and routing_row.value else {}
    out: dict[str, Any] = {}
    if strategies:
        out["strategies"] = strategies
    if routing:
        out["routing"] = routing
    return out


class SettingsStore:
    """Per-process view of the shared configuration (one per app, in ``app.extensions``)."""

    def __init__(self, app: Flask):
        self.app = app
        self.poll_seconds = get_config(app).config_poll_seconds
        self.clock: Callable[[], float] = time.monotonic  # injectable (tests)
        self.reset()

    @property
    def holds_versions(self) -> bool:
        """Whether this process holds the shared versions (False after ``reset``: the next call
        reads them from SQL)."""
        return self._versions is not None

    def reset(self) -> None:
        """Forget cached state (after fork, tests): the next call polls and reloads.

        Returns
        -------
        None
        """
        # A lock inherited across fork may be held by a thread that does not exist here.
        self._lock = threading.Lock()
        self._versions: Versions | None = None
        self._polled_at = 0.0
        self._config: ServingConfig | None = None
        self._config_version: int | None = None
        # (profile version, its serving overrides): the last active profile that loaded.
        self._profile: tuple[str, dict[str, Any]] | None = None
        self.poller = BackgroundPoll("settings", self._poll)
        # Through self.clock, so a test that injects a clock moves this one too.
        self._poll_log = RateLimitedLog(log, every_s=POLL_LOG_EVERY_S, clock=lambda: self.clock())

    def _session(self) -> Session:
        return self.app.extensions["recsys.sessionmaker"]()

    # -- reading ----------------------------------------------------------------------------
    def versions(self, force: bool = False) -> Versions:
        """Shared versions, re-read from SQL at most every ``poll_seconds``.

        Between polls requests get the versions held while a background thread polls.

        Parameters
        ----------
        force : bool, optional
            Read from SQL now, whatever the time since the last poll.

        Returns
        -------
        Versions
            The shared versions.
        """
        now = self.clock()
        if not force and self._versions is not None and now - self._polled_at < self.poll_seconds:
            return self._versions
        # Requests keep serving the versions they have while a background thread polls
        # (recsys.ops.polling). Inline only with nothing to serve yet, after this process wrote a
        # change (_polled_at reset: it must see its own writes), or when polling every call.
        wait = force or self._versions is None or self._polled_at == 0.0
        if not wait and self.poll_seconds > 0:
            self.poller.trigger()
            return self._versions
        return self._poll(force)

    def _poll(self, force: bool = False) -> Versions:
        with self._lock:
            if (
                not force
                and self._versions is not None
                and self.clock() - self._polled_at < self.poll_seconds
            ):
                return self._versions
            try:
                with self._session() as s:
                    rows = s.execute(
                        select(Setting.key, Setting.value).where(Setting.key.in_(VERSION_KEYS))
                    ).all()
                vals = {k: int((v or {}).get("version", 0)) for k, v in rows}
                self._versions = Versions(
                    vals.get(CONFIG_VERSION, 0),
                    vals.get(CATALOG_VERSION, 0),
                    vals.get(CACHE_EPOCH, 0),
                    vals.get(ITEMS_VERSION, 0),
                )
            except Exception as e:
                if self._versions is None:
                    raise
                # The store blinked (or is down: then every poll fails, several a second):
                # keep serving the last known configuration; one line now and then, no
                # traceback.
                self._poll_log.warning(
                    "polling the configuration version failed (serving the last known): %s: %s",
                    type(e).__name__,
                    (str(e).splitlines() or [""])[0][:300],
                )
            self._polled_at = self.clock()
            return self._versions

    def config(self) -> ServingConfig:
        """The current merged configuration: defaults <- active serving profile <- admin
        overrides. Re-read only when ``config_version`` moves (profile activations bump it).

        Returns
        -------
        ServingConfig
            The merged configuration (shared until ``config_version`` moves).
        """
        v = self.versions().config
        if self._config is not None and self._config_version == v:
            return self._config
        with self._lock:
            if self._config is None or self._config_version != v:
                with self._session() as s:
                    over = read_overrides(s)
                base = ServingConfig.default()
                profile = self._profile_overrides()
                try:
                    base = base.with_overrides(profile)
                except ValueError:
                    log.exception("active serving profile does not validate; not applied")
                try:
                    cfg = base.with_overrides(over)
                except ValueError:
                    # Writes are validated, so this means a hand-edited row: do not go down.
                    log.exception("stored configuration is invalid; using shipped defaults")
                    cfg = base
                self._config, self._config_version = cfg, v
        return self._config

    def _profile_overrides(self) -> dict[str, Any]:
        """The active serving profile's overrides (``recsys.models.profile``), verified against
        its checksums. A profile that fails to load is logged and the last one that loaded in
        this process keeps serving (none: the shipped defaults)."""
        from recsys.models.profile import load_profile
        from recsys.models.repository import PROFILE_KIND, get_repository

        repo = get_repository(self.app)
        try:
            version = repo.active_version(PROFILE_KIND)
        except Exception:
            log.exception("reading the active serving profile failed")
            return self._profile[1] if self._profile else {}
        if version is None:
            self._profile = None
            return {}
        if self._profile is not None and self._profile[0] == version:
            return self._profile[1]
        try:
            over = load_profile(repo, version).serving_overrides()
        except Exception as e:  # noqa: BLE001 - a bad artifact must not take serving down
            log.error("serving profile %s refused: %s", version, getattr(e, "description", e))
            return self._profile[1] if self._profile else {}
        self._profile = (version, over)
        return over

    def overrides(self) -> dict[str, Any]:
        """The admin's overrides, read from SQL now (``read_overrides``).

        Returns
        -------
        dict
            A ServingConfig dict of only what an admin set.
        """
        with self._session() as s:
            return read_overrides(s)

    # -- writing ----------------------------------------------------------------------------
    def changed(self) -> None:
        """This process wrote a change elsewhere (a profile activation): re-read on next use.

        Returns
        -------
        None
        """
        self._polled_at = 0.0

    def bump_version(self, reason: str, key: str = CONFIG_VERSION) -> int:
        """Bump a shared version in its own transaction (model activations, cache epochs).

        Parameters
        ----------
        reason : str
            Why, stored with the version.
        key : str, optional
            Which shared version (``recsys.store.versions.VERSION_KEYS``).

        Returns
        -------
        int
            The new version (this process sees it on its next read).
        """
        with self._session() as s, s.begin():
            v = bump(s, key, reason)
        self._polled_at = 0.0  # this process sees its own change on the next call
        return v

    def update_strategies(
        self, patch: Mapping[str, Mapping[str, Any]], actor: str
    ) -> tuple[dict, dict]:
        """Apply ``{"als": {"enabled": false, "weight": 0.5}, ...}``; validated, audited.

        Parameters
        ----------
        patch : Mapping
            Strategy name -> the fields to set (``enabled``, ``weight``).
        actor : str
            Who changes them (audit log).

        Returns
        -------
        tuple of (dict, dict)
            ``(before, after)`` effective strategy settings.

        Raises
        ------
        ValueError
            An empty patch, an unknown strategy or field, or a configuration ``ServingConfig``
            refuses.
        """

        if not isinstance(patch, Mapping) or not patch:
            raise ValueError("body must be a non-empty object of strategy -> settings")
        with self._session() as s, s.begin():
            lock_config(s)
            over = read_overrides(s)
            before_cfg = ServingConfig.from_dict(over)
            new_over = {"strategies": {**over.get("strategies", {})}}
            for name, fields in patch.items():
                if not isinstance(fields, Mapping):
                    raise ValueError(f"strategies.{name} must be an object")
                new_over["strategies"][name] = {**new_over["strategies"].get(name, {}), **fields}
            if "routing" in over:
                new_over["routing"] = over["routing"]
            after_cfg = ServingConfig.from_dict(new_over)  # validates names and values
            for name, fields in patch.items():
                row = s.get(StrategySetting, name)
                if row is None:
                    insert_ignore(s, StrategySetting, {"name": name, "params": {}}, "name")
                    row = s.get(StrategySetting, name)
                params = dict(row.params or {})
                params["set"] = sorted(set(params.get("set") or []) | set(fields))
                row.params = params
                sc = after_cfg.strategies[name]
                row.enabled, row.weight = sc.enabled, sc.weight
            before, after = self._record(s, "strategies", patch, before_cfg, after_cfg, actor)
        self._polled_at = 0.0  # this process sees its own change on the next call
        return before, after

    def update_routing(self, patch: Mapping[str, Any], actor: str) -> tuple[dict, dict]:
        """Apply a partial routing dict; validated, audited.

        Parameters
        ----------
        patch : Mapping
            Routing keys to set (as in ``ServingConfig``'s ``routing``).
        actor : str
            Who changes them (audit log).

        Returns
        -------
        tuple of (dict, dict)
            ``(before, after)`` routing.

        Raises
        ------
        ValueError
            An empty patch, an unknown key, or a routing ``ServingConfig`` refuses.
        """

        if not isinstance(patch, Mapping) or not patch:
            raise ValueError("body must be a non-empty object of routing settings")
        unknown = set(patch) - set(DEFAULT_CONFIG["routing"])
        if unknown:
            raise ValueError(f"unknown routing keys: {sorted(unknown)}")
        with self._session() as s, s.begin():
            lock_config(s)
            over = read_overrides(s)
            before_cfg = ServingConfig.from_dict(over)
            routing = {**over.get("routing", {}), **patch}
            after_cfg = ServingConfig.from_dict({**over, "routing": routing})
            row = s.get(Setting, ROUTING)
            if row is None:
                s.add(Setting(key=ROUTING, value=routing))
            else:
                row.value = routing
            before, after = self._record(s, "routing", patch, before_cfg, after_cfg, actor)
        self._polled_at = 0.0  # this process sees its own change on the next call
        return before, after

    def reset_strategy(self, name: str, fields: list[str] | None, actor: str) -> tuple[dict, dict]:
        """Drop the admin's override of ``fields`` of strategy ``name``, so they take the serving
        profile's or the shipped value again; validated, audited.

        Parameters
        ----------
        name : str
            The strategy.
        fields : list of str or None
            Fields to reset (``enabled``, ``weight``); None: all.
        actor : str
            Who resets them (audit log).

        Returns
        -------
        tuple of (dict, dict)
            ``(before, after)`` effective settings of the reset fields.

        Raises
        ------
        ValueError
            An unknown strategy or field, or a configuration ``ServingConfig`` refuses.
        """
        if name not in STRATEGY_NAMES:
            raise ValueError(f"unknown strategy {name!r}; expected one of {list(STRATEGY_NAMES)}")
        fields = list(fields or STRATEGY_FIELDS)
        if bad := sorted(set(fields) - set(STRATEGY_FIELDS)):
            raise ValueError(f"unknown fields {bad}; expected some of {list(STRATEGY_FIELDS)}")
        with self._session() as s, s.begin():
            lock_config(s)
            over = read_overrides(s)
            before_cfg = self._effective_or_default(over)
            row = s.get(StrategySetting, name)
            if row is not None:
                params = dict(row.params or {})
                params["set"] = sorted(set(params.get("set") or []) - set(fields))
                row.params = params
            strategies = {k: dict(v) for k, v in over.get("strategies", {}).items()}
            for f in fields:
                strategies.get(name, {}).pop(f, None)
            after_cfg = self._effective({**over, "strategies": strategies})
            old = before_cfg.to_dict()["strategies"][name]
            new = after_cfg.to_dict()["strategies"][name]
            before = {name: {f: old[f] for f in fields}}
            after = {name: {f: new[f] for f in fields}}
            self._log_change(
                s, "strategies.reset", f"{name}:{','.join(fields)}", before, after, actor
            )
        self._polled_at = 0.0
        return before, after

    def reset_routing(self, keys: list[str], actor: str) -> tuple[dict, dict]:
        """Drop the admin's routing overrides ``keys`` (back to the profile's or shipped value);
        validated, audited.

        Parameters
        ----------
        keys : list of str
            Routing keys to reset.
        actor : str
            Who resets them (audit log).

        Returns
        -------
        tuple of (dict, dict)
            ``(before, after)`` effective values.

        Raises
        ------
        ValueError
            No key, an unknown key, or a routing ``ServingConfig`` refuses.
        """
        if not keys:
            raise ValueError("name at least one routing key")
        if bad := sorted(set(keys) - set(DEFAULT_CONFIG["routing"])):
            raise ValueError(f"unknown routing keys: {bad}")
        with self._session() as s, s.begin():
            lock_config(s)
            over = read_overrides(s)
            before_cfg = self._effective_or_default(over)
            routing = {k: v for k, v in over.get("routing", {}).items() if k not in keys}
            after_cfg = self._effective({**over, "routing": routing})  # validates what is left
            row = s.get(Setting, ROUTING)
            if row is not None:
                row.value = routing
            old, new = before_cfg.to_dict()["routing"], after_cfg.to_dict()["routing"]
            before = {k: old[k] for k in keys}
            after = {k: new[k] for k in keys}
            self._log_change(s, "routing.reset", ",".join(sorted(keys)), before, after, actor)
        self._polled_at = 0.0
        return before, after

    def _effective_or_default(self, over: Mapping[str, Any]) -> ServingConfig:
        """``_effective(over)``; where the stored overrides no longer validate (written before
        a bound was declared, or by hand) the profile's or shipped values, so a reset can still
        repair them."""
        try:
            return self._effective(over)
        except ValueError:
            return self._effective({})

    def _effective(self, over: Mapping[str, Any]) -> ServingConfig:
        """Shipped defaults <- active serving profile <- ``over`` (what ``config`` serves)."""
        base = ServingConfig.default()
        try:
            base = base.with_overrides(self._profile_overrides())
        except ValueError:
            pass
        return base.with_overrides(over)

    @staticmethod
    def _log_change(
        s: Session, action: str, target: str, before: dict, after: dict, actor: str
    ) -> None:
        from recsys.ops import audit

        v = bump(s, CONFIG_VERSION, f"{action} by {actor}")
        audit.record(s, actor, action, target, before, after)
        log.info("%s %s by %s (config version %d): %s", action, target, actor, v, after)

    @staticmethod
    def _record(
        s: Session,
        section: str,
        patch: Mapping[str, Any],
        before_cfg: ServingConfig,
        after_cfg: ServingConfig,
        actor: str,
    ) -> tuple[dict, dict]:
        """In the change's transaction: the patched keys of ``section`` before and after, a
        new config version and the audit row (who, what, before, after)."""
        from recsys.ops import audit

        old, new = before_cfg.to_dict()[section], after_cfg.to_dict()[section]
        before = {k: old[k] for k in patch}
        after = {k: new[k] for k in patch}
        v = bump(s, CONFIG_VERSION, f"{section} changed by {actor}")
        audit.record(s, actor, f"{section}.update", ",".join(sorted(patch)), before, after)
        log.info("%s updated by %s (config version %d): %s", section, actor, v, after)
        return before, after


def init_app(app: Flask) -> None:
    """Make the app's settings store (``app.extensions["recsys.settings"]``).

    Parameters
    ----------
    app : Flask
        The app.

    Returns
    -------
    None
    """
    app.extensions["recsys.settings"] = SettingsStore(app)


def get_settings(app: Flask | None = None) -> SettingsStore:
    """The app's settings store.

    Parameters
    ----------
    app : Flask or None, optional
        The app; None: ``current_app``.

    Returns
    -------
    SettingsStore
        The store ``init_app`` made.
    """
    return (app or current_app).extensions["recsys.settings"]


def bump_version(reason: str, app: Flask | None = None) -> int:
    """Bump the shared config version (e.g. after a model activation): caches keyed on it
    are invalidated in every worker within ``CONFIG_POLL_SECONDS``.

    Parameters
    ----------
    reason : str
        Why, stored with the version.
    app : Flask or None, optional
        The app; None: ``current_app``.

    Returns
    -------
    int
        The new config version.
    """
    return get_settings(app).bump_version(reason)
