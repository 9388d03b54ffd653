"""SQLAlchemy 2 typed models. One Alembic chain (migrations/) creates exactly this schema."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Event types, weakest signal first. "dislike" is a negative signal: never a positive training
# example, and the item is excluded from that user's recommendations.
EVENT_TYPES = ("view", "click", "cart", "purchase", "rating", "dislike")

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments "INTEGER PRIMARY KEY"; PostgreSQL gets a real BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    """The current UTC time, naive (the columns are ``DateTime`` without time zone).

    Returns
    -------
    datetime
        Now, in UTC, without ``tzinfo``.
    """
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    """Declarative base of every table: the constraint naming convention, and JSON for
    ``dict`` / ``list`` columns.
    """

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class User(Base):
    """A user, known by the client's ``external_id``; ``attributes`` is free-form JSON."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    external_id: Mapped[str] = mapped_column(String(128), unique=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class Item(Base):
    """A catalogue item, known by the client's ``external_id``: display data, ``categories``
    (the first is the primary one) and ``available`` (only available items are recommended).
    """

    __tablename__ = "items"
    # GET /v1/latest: newest first.
    __table_args__ = (Index("ix_items_created_at_id", "created_at", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    external_id: Mapped[str] = mapped_column(String(128), unique=True)
    title: Mapped[str] = mapped_column(String(512), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    # A list of category names; the first is the primary category.
    categories: Mapped[list[Any]] = mapped_column(default=list)
    price: Mapped[float | None] = mapped_column(Float, nullable=True)
    image_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    available: Mapped[bool] = mapped_column(Boolean, default=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class Event(Base):
    """One interaction of a user with an item (``type``: one of ``EVENT_TYPES``; ``value``: a
    rating, else 1.0; ``ts``: naive UTC). ``idem_key`` makes re-sent events insert nothing.
    """

    __tablename__ = "events"
    __table_args__ = (
        CheckConstraint(
            "type IN ('view', 'click', 'cart', 'purchase', 'rating', 'dislike')",
            name="event_type",
        ),
        # "This user's history, newest first" is the hot query of every request.
        Index("ix_events_user_ts_id", "user_id", "ts", "id"),
        Index("ix_events_item_id", "item_id"),
        Index("ix_events_ts", "ts"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(16))
    value: Mapped[float] = mapped_column(Float, default=1.0)
    ts: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # Idempotency key: the client's event id ("api:<id>") or the importer's line key
    # ("online-retail:<line>"). Re-sending or re-importing the same event inserts nothing.
    idem_key: Mapped[str | None] = mapped_column(String(200), unique=True, nullable=True)


class Impression(Base):
    """One item shown to a user: its ``position`` (0: first) in the list the storefront showed,
    where (``context``: "home", "cart" ...), the ``request_id`` of the list's answer when the
    client passes it on, and when (``ts``: naive UTC). With the events, what was shown but not
    clicked (``recsys.store.impressions``). ``idem_key`` makes a re-sent list insert nothing.
    """

    __tablename__ = "impressions"
    __table_args__ = (
        Index("ix_impressions_user_ts", "user_id", "ts"),
        Index("ix_impressions_item_id", "item_id"),
        Index("ix_impressions_ts", "ts"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer, default=0)
    context: Mapped[str] = mapped_column(String(64), default="")
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    ts: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    idem_key: Mapped[str | None] = mapped_column(String(200), unique=True, nullable=True)


class StrategySetting(Base):
    """Operator toggles per strategy; read by every worker (see recsys.serving.settings_store)."""

    __tablename__ = "strategy_settings"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    weight: Mapped[float] = mapped_column(Float, default=1.0)
    # "preload" (load at start) or "lazy" (load on first use).
    load_mode: Mapped[str] = mapped_column(String(16), default="preload")
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class Setting(Base):
    """Global key/value settings (routing, blend method, the shared config version)."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class ModelVersion(Base):
    """A trained model version of a strategy: its artifact folder ``path``, the sha256 of its
    manifest (the root of trust), params, metrics and training data snapshot; at most one
    ``is_active`` per strategy.
    """

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("strategy", "version"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    strategy: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(1024))
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    data_snapshot: Mapped[dict[str, Any]] = mapped_column(default=dict)
    is_active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ModelActivation(Base):
    """History of activations, newest last; rollback walks it backwards."""

    __tablename__ = "model_activations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    strategy: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[str] = mapped_column(String(64))
    previous_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # "activate" pushes onto the history, "rollback" pops it (see recsys.models.repository).
    kind: Mapped[str] = mapped_column(String(16), default="activate", server_default="activate")
    actor: Mapped[str] = mapped_column(String(128), default="cli")
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Experiment(Base):
    """An A/B experiment: ``variants`` (``[{"name", "weight", "config"}, ...]``), ``status``
    and an optional ``start_at`` / ``stop_at`` window (naive UTC; None: open-ended).
    """

    __tablename__ = "experiments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    # [{"name": "A", "weight": 0.5, "config": {...override...}}, ...]
    variants: Mapped[list[Any]] = mapped_column(default=list)
    status: Mapped[str] = mapped_column(String(16), default="running")
    start_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    stop_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Exposure(Base):
    """One recommendation answer shown to a user under an experiment's variant (``items``: the
    item ids shown)."""

    __tablename__ = "exposures"
    __table_args__ = (Index("ix_exposures_experiment_user", "experiment", "user_external_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    experiment: Mapped[str] = mapped_column(String(128))
    variant: Mapped[str] = mapped_column(String(64))
    user_external_id: Mapped[str] = mapped_column(String(128))
    items: Mapped[list[Any]] = mapped_column(default=list)
    ts: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class AuditLog(Base):
    """One administrative change: who (``actor``), what (``action``, ``target``) and the state
    ``before`` / ``after`` (JSON, None: not recorded); see ``recsys.ops.audit``.
    """

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(256), default="")
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)


class Job(Base):
    """One offline run: a training, tuning or import (``kind``) with its ``args``, who started
    it (``started_by``: ``cli:<os user>``, ``timer:<name>``, or the console's actor), when it
    started and ended, its ``progress`` (0..1) and current ``message``, its ``outcome``
    (``queued``, ``running``, ``succeeded``, ``failed``), the ``error`` of a failed run and the
    ``result`` (versions made, profile). ``host``/``pid``: the process doing it; see
    ``recsys.ops.jobs``.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_kind_started_at", "kind", "started_at"),
        Index("ix_jobs_outcome", "outcome"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    args: Mapped[dict[str, Any]] = mapped_column(default=dict)
    started_by: Mapped[str] = mapped_column(String(128), default="cli")
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(String(256), default="")
    outcome: Mapped[str] = mapped_column(String(16), default="queued")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    host: Mapped[str] = mapped_column(String(128), default="")
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
