"""SQL store: typed models and engine/session helpers."""

from recsys.store.db import get_engine, init_db, session_scope
from recsys.store.models import (
    EVENT_TYPES,
    AuditLog,
    Base,
    Event,
    Experiment,
    Exposure,
    Item,
    Job,
    ModelActivation,
    ModelVersion,
    Setting,
    StrategySetting,
    User,
)

__all__ = [
    "EVENT_TYPES",
    "AuditLog",
    "Base",
    "Event",
    "Experiment",
    "Exposure",
    "Item",
    "Job",
    "ModelActivation",
    "ModelVersion",
    "Setting",
    "StrategySetting",
    "User",
    "get_engine",
    "init_db",
    "session_scope",
]
