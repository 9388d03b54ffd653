"""Online experiments: deterministic assignment, exposures, attribution and the report.

* **Assignment.** A user's bucket in an experiment is ``sha256(name + "\\0" + user_id)`` read as
  a number in [0, 1): the same on every worker, server and restart, and independent across
  experiments (the name is part of the hash). Variants own consecutive slices of [0, 1) in the
  order given, by weight; if the weights sum to less than 1 the rest of the users are not
  enrolled. A user is served by at most one experiment: the oldest running one that enrolls
  them (so experiments can be layered on disjoint traffic by giving each a partial split).
* **Serving.** ``init_app`` installs the two hooks the request path offers
  (``recsys.web.api.recommend``): a variant resolver, whose overrides are merged over the serving
  configuration and whose variant is part of the cache key (results are never mixed across
  variants), and an exposure hook.
* **Exposures.** One ``Exposure`` row (experiment, variant, user, the item ids shown, time) per
  list served to an enrolled user, including answers from the cache: a cached list is still
  what the user saw. One small INSERT per served list; nothing is buffered in memory, so a
  worker that dies loses nothing and the report always reconciles with the stored rows.
* **Attribution.** A later ``click`` on a shown item is a click; a later ``cart`` or
  ``purchase`` is a conversion. Each event goes to the user's latest exposure in that
  experiment at or before the event that contains the item, within ``window`` (default 24 h);
  other events of exposed users are counted as unattributed, so attributed + unattributed always
  equals the events stored.
* **Report.** Per variant: exposures, users, click-through (exposures with a click / exposures)
  and conversion (exposures with a cart or purchase / exposures) with Wilson 95% intervals, and
  each variant against the first (difference, Newcombe 95% interval, two-proportion z-test).

Over 500 lines only through the numpy-style docstrings of its public API (about 300
lines without them): the code is one unit, not split for length.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from recsys.config import get_config
from recsys.errors import DB_UNAVAILABLE, RateLimitedLog
from recsys.ops.polling import BackgroundPoll
from recsys.store.models import Experiment, Exposure, utcnow

log = logging.getLogger(__name__)
_poll_log = RateLimitedLog(log, every_s=60.0)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
CLICK_TYPES = ("click",)
CONVERSION_TYPES = ("cart", "purchase")
DEFAULT_WINDOW_S = 24 * 3600
STATUSES = ("running", "stopped")


class ExperimentError(ValueError):
    """An invalid experiment definition (the message says which field)."""


# -- assignment ---------------------------------------------------------------------------------
def bucket(experiment: str, user_id: str) -> float:
    """The user's position in [0, 1) for this experiment (stable, experiment-specific).

    Parameters
    ----------
    experiment : str
        The experiment's name.
    user_id : str
        The external user id.

    Returns
    -------
    float
        From the first 8 bytes of sha256 of the two; the same inputs always give the same value.
    """
    digest = hashlib.sha256(f"{experiment}\0{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign(experiment: str, variants: list[dict[str, Any]], user_id: str) -> str | None:
    """The variant for ``user_id``: the first whose cumulative weight passes the user's bucket.

    Parameters
    ----------
    experiment : str
        The experiment's name.
    variants : list of dict
        ``[{"name", "weight", ...}, ...]``; weights are fractions summing to at most 1.
    user_id : str
        The external user id.

    Returns
    -------
    str or None
        The variant name; None when the split leaves the user out.
    """
    b = bucket(experiment, user_id)
    edge = 0.0
    for v in variants:
        edge += float(v["weight"])
        if b < edge:
            return str(v["name"])
    return None


@dataclass(frozen=True)
class ExperimentView:
    """An experiment as read from SQL (immutable): ``variants`` (``[{"name", "weight",
    "config"}, ...]``), ``status`` and its window (naive UTC; None: open-ended).
    """

    name: str
    variants: list[dict[str, Any]]
    status: str
    start_at: dt.datetime | None
    stop_at: dt.datetime | None
    created_at: dt.datetime

    def is_active(self, now: dt.datetime) -> bool:
        """Whether the experiment enrols users at ``now``.

        Parameters
        ----------
        now : datetime
            Naive UTC.

        Returns
        -------
        bool
            True when running and ``start_at <= now < stop_at`` (a None bound is open).
        """
        if self.status != "running":
            return False
        if self.start_at is not None and now < self.start_at:
            return False
        return not (self.stop_at is not None and now >= self.stop_at)

    def variant(self, name: str) -> dict[str, Any] | None:
        """The variant named ``name``.

        Parameters
        ----------
        name : str
            The variant's name.

        Returns
        -------
        dict or None
            The variant's definition; None when there is none of that name.
        """
        return next((v for v in self.variants if v["name"] == name), None)

    def to_dict(self) -> dict[str, Any]:
        """The experiment as the admin API answers it.

        Returns
        -------
        dict
            ``name``, ``variants``, ``status``, ``active`` (now), and ``start_at``, ``stop_at``,
            ``created_at`` as ISO 8601 UTC with ``Z`` (None: unset).
        """
        return {
            "name": self.name,
            "variants": self.variants,
            "status": self.status,
            "active": self.is_active(utcnow()),
            "start_at": _iso(self.start_at),
            "stop_at": _iso(self.stop_at),
            "created_at": _iso(self.created_at),
        }


def _iso(t: dt.datetime | None) -> str | None:
    return t.isoformat() + "Z" if t is not None else None


def _view(row: Experiment) -> ExperimentView:
    return ExperimentView(
        name=row.name,
        variants=list(row.variants or []),
        status=row.status,
        start_at=row.start_at,
        stop_at=row.stop_at,
        created_at=row.created_at,
    )


# -- definitions ----------------------------------------------------------------------------------
def _parse_time(value: Any, field: str) -> dt.datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ExperimentError(f"{field} must be an ISO 8601 date/time string")
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as e:
        raise ExperimentError(f"{field}: {e}") from e
    if t.tzinfo is not None:
        t = t.astimezone(dt.UTC).replace(tzinfo=None)
    return t


def validate_definition(body: Any) -> dict[str, Any]:
    """Check a create request.

    Parameters
    ----------
    body : Any
        The request's JSON: ``name``, ``variants`` and optional ``start_at`` / ``stop_at``.

    Returns
    -------
    dict
        The normalised fields: ``name``, ``variants``, ``start_at``, ``stop_at``.

    Raises
    ------
    ExperimentError
        A field is missing or invalid (the message says which).
    """
    from recsys.core.config import ServingConfig

    if not isinstance(body, dict):
        raise ExperimentError("body must be a JSON object")
    unknown = set(body) - {"name", "variants", "start_at", "stop_at"}
    if unknown:
        raise ExperimentError(f"unknown fields {sorted(unknown)}")
    name = body.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ExperimentError("name must be 1-128 characters of letters, digits, '_', '.', '-'")
    variants = body.get("variants")
    if not isinstance(variants, list) or not 2 <= len(variants) <= 20:
        raise ExperimentError("variants must be a list of 2 to 20 variants")
    out, names, total = [], set(), 0.0
    base = ServingConfig.default()
    for i, v in enumerate(variants):
        if not isinstance(v, dict) or set(v) - {"name", "weight", "config"}:
            raise ExperimentError(f"variants[{i}] must be {{name, weight, config}}")
        vname = v.get("name")
        if not isinstance(vname, str) or not NAME_RE.match(vname) or len(vname) > 64:
            raise ExperimentError(f"variants[{i}].name must be 1-64 letters/digits/_.-")
        if vname in names:
            raise ExperimentError(f"variant name {vname!r} is repeated")
        names.add(vname)
        w = v.get("weight")
        if isinstance(w, bool) or not isinstance(w, int | float) or not 0 < w <= 1:
            raise ExperimentError(f"variants[{i}].weight must be a number in (0, 1]")
        total += float(w)
        cfg = v.get("config", {}) or {}
        if not isinstance(cfg, dict):
            raise ExperimentError(f"variants[{i}].config must be an object")
        try:
            base.with_overrides(cfg)
        except ValueError as e:
            raise ExperimentError(f"variants[{i}].config: {e}") from e
        out.append({"name": vname, "weight": float(w), "config": cfg})
    if total > 1.0 + 1e-9:
        raise ExperimentError(f"variant weights sum to {total:g}; they must sum to at most 1")
    start = _parse_time(body.get("start_at"), "start_at")
    stop = _parse_time(body.get("stop_at"), "stop_at")
    if start and stop and stop <= start:
        raise ExperimentError("stop_at must be after start_at")
    return {"name": name, "variants": out, "start_at": start, "stop_at": stop}


def create(s: Session, body: Any) -> ExperimentView:
    """Create a running experiment (flushed; the caller commits).

    Parameters
    ----------
    s : Session
        The session.
    body : Any
        The create request (see ``validate_definition``).

    Returns
    -------
    ExperimentView
        The new experiment.

    Raises
    ------
    ExperimentError
        An invalid definition.
    Conflict
        An experiment of that name exists.
    """
    fields = validate_definition(body)
    if s.scalar(select(Experiment.id).where(Experiment.name == fields["name"])) is not None:
        from recsys.errors import Conflict

        raise Conflict(f"experiment {fields['name']!r} already exists")
    row = Experiment(status="running", created_at=utcnow(), **fields)
    s.add(row)
    s.flush()
    return _view(row)


def stop(s: Session, name: str) -> ExperimentView:
    """Stop experiment ``name`` now (its ``stop_at`` becomes now unless already past).

    Parameters
    ----------
    s : Session
        The session (flushed; the caller commits).
    name : str
        The experiment's name.

    Returns
    -------
    ExperimentView
        The stopped experiment.

    Raises
    ------
    NotFound
        No experiment of that name.
    """
    row = s.scalar(select(Experiment).where(Experiment.name == name))
    if row is None:
        from recsys.errors import NotFound

        raise NotFound(f"no experiment named {name!r}")
    row.status = "stopped"
    if row.stop_at is None or row.stop_at > utcnow():
        row.stop_at = utcnow()
    s.flush()
    return _view(row)


def list_all(s: Session) -> list[ExperimentView]:
    """Every experiment, oldest first.

    Parameters
    ----------
    s : Session
        The session read from.

    Returns
    -------
    list of ExperimentView
        Ordered by creation time, then id.
    """
    rows = s.scalars(select(Experiment).order_by(Experiment.created_at, Experiment.id)).all()
    return [_view(r) for r in rows]


def get(s: Session, name: str) -> ExperimentView | None:
    """Experiment ``name``.

    Parameters
    ----------
    s : Session
        The session read from.
    name : str
        The experiment's name.

    Returns
    -------
    ExperimentView or None
        The experiment; None when there is none of that name.
    """
    row = s.scalar(select(Experiment).where(Experiment.name == name))
    return _view(row) if row else None


# -- serving hooks --------------------------------------------------------------------------------
class ExperimentCache:
    """This process's view of the experiments, re-read from SQL at most every ``ttl_s``.

    Polling (rather than per-request queries) keeps the hot path cheap; a created or stopped
    experiment reaches every worker of every server within ``ttl_s``.
    """

    def __init__(self, app: Flask, ttl_s: float = 1.0):
        self.app = app
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._loaded_at = -math.inf
        self._experiments: list[ExperimentView] = []
        self._poller = BackgroundPoll("experiments", self._refresh)

    def experiments(self) -> list[ExperimentView]:
        """The experiments as last read; past ``ttl_s`` a background refresh is started (read now
        only when nothing is loaded yet, after ``invalidate``, or with ``ttl_s`` 0).

        Returns
        -------
        list of ExperimentView
            Every experiment, oldest first.
        """
        now = time.monotonic()
        if now - self._loaded_at >= self.ttl_s:
            if self._loaded_at == -math.inf or self.ttl_s <= 0:
                self._refresh()  # nothing loaded yet, or invalidated here: read it now
            else:
                self._poller.trigger()  # serve what we have; refresh in the background
        return self._experiments

    def _refresh(self) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._loaded_at < self.ttl_s:
                return
            from recsys.store import session_scope

            try:
                with session_scope(self.app) as s:
                    self._experiments = list_all(s)
            except DB_UNAVAILABLE as e:  # an outage: one line now and then, no traceback
                _poll_log.warning("could not refresh experiments: %s", e)
            except Exception:  # keep serving with the last known experiments
                log.exception("could not refresh experiments")
            self._loaded_at = now

    def invalidate(self) -> None:
        """Re-read the experiments on the next call (this process created or stopped one).

        Returns
        -------
        None
        """
        self._loaded_at = -math.inf

    def assignments(self, user_id: str) -> list[dict[str, Any]]:
        """Every running experiment's assignment of this user.

        Parameters
        ----------
        user_id : str
            The external user id.

        Returns
        -------
        list of dict
            ``{"name", "variant"}`` per running experiment (variant None: not enrolled).
        """
        now = utcnow()
        out = []
        for e in self.experiments():
            if e.is_active(now):
                out.append({"name": e.name, "variant": assign(e.name, e.variants, str(user_id))})
        return out

    def resolve(self, user_id: str) -> dict[str, Any] | None:
        """The assignment that serves this user: the oldest running experiment enrolling them.

        Parameters
        ----------
        user_id : str
            The external user id.

        Returns
        -------
        dict or None
            ``{"experiment", "variant", "overrides"}`` (``overrides``: the variant's config,
            or None); None when no running experiment enrols the user.
        """
        now = utcnow()
        for e in self.experiments():
            if not e.is_active(now):
                continue
            vname = assign(e.name, e.variants, str(user_id))
            if vname is not None:
                v = e.variant(vname) or {}
                return {"experiment": e.name, "variant": vname, "overrides": v.get("config")}
        return None


def get_experiments(app: Flask) -> ExperimentCache:
    """The app's experiment cache.

    Parameters
    ----------
    app : Flask
        The app.

    Returns
    -------
    ExperimentCache
        The cache kept in ``app.extensions``.
    """
    return app.extensions["recsys.experiments"]


# Set while the operator console previews a user's list (recsys.web.console): an operator looking
# at a list is not the user being shown it, so no exposure is recorded.
_NO_EXPOSURES: ContextVar[bool] = ContextVar("recsys_no_exposures", default=False)


@contextmanager
def no_exposures() -> Iterator[None]:
    """Record no exposure inside the ``with`` block (the operator console's previews).

    Returns
    -------
    Iterator[None]
        A context manager; the previous setting is restored on exit.
    """
    token = _NO_EXPOSURES.set(True)
    try:
        yield
    finally:
        _NO_EXPOSURES.reset(token)


def record_exposure(app: Flask, user_id: str, assignment: dict, response: dict) -> None:
    """One Exposure row per list served to an enrolled user (cache hits included).

    Nothing is recorded for an empty list or inside ``no_exposures``.

    Parameters
    ----------
    app : Flask
        The app (its SQL session).
    user_id : str
        The external user id.
    assignment : dict
        What ``ExperimentCache.resolve`` returned (``experiment``, ``variant``).
    response : dict
        The answer's JSON (its ``items``' ``item_id`` are recorded).

    Returns
    -------
    None
    """
    from recsys.store import session_scope

    if _NO_EXPOSURES.get():
        return

    items = [it["item_id"] for it in response.get("items", [])]
    if not items:
        return
    with session_scope(app) as s:
        s.add(
            Exposure(
                experiment=assignment["experiment"],
                variant=assignment["variant"],
                user_external_id=str(user_id),
                items=items,
                ts=utcnow(),
            )
        )


def init_app(app: Flask) -> None:
    """The experiments cache (refreshed every ``CONFIG_POLL_SECONDS``), the variant resolver
    and the exposure hook of the request path.

    Parameters
    ----------
    app : Flask
        The app (its settings: ``recsys.config.get_config``).

    Returns
    -------
    None
    """
    cache = ExperimentCache(app, ttl_s=get_config(app).config_poll_seconds)
    app.extensions["recsys.experiments"] = cache
    app.extensions["recsys.variant_resolver"] = cache.resolve
    app.extensions["recsys.exposure_hook"] = lambda user_id, assignment, response: record_exposure(
        app, user_id, assignment, response
    )
