"""What one recommendation request carries through the pipeline: the snapshot it serves with,
what the adapter parsed (``UserAsk``), the answer, and the byte-level helpers on cached bodies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from recsys.core.config import ServingConfig
from recsys.core.types import RecRequest, RecResult
from recsys.serving.cache import Peek
from recsys.serving.catalog import Catalog
from recsys.store.versions import Versions

_DEGRADED = b'"degraded":true'
_NOT_CACHED = b'"cached":false'
_CACHED = b'"cached":true'


def is_degraded(body: bytes) -> bool:
    return _DEGRADED in body


def mark_cached(body: bytes) -> bytes:
    """A stored body (``"cached": false``) as a cache hit answers it."""
    # Keys are sorted, so ``"cached"`` is the first key; an id containing the text has its
    # quotes escaped (``\\"``), so the first unescaped match is always the key itself.
    return body.replace(_NOT_CACHED, _CACHED, 1)


@dataclass
class Snapshot:
    """What one request serves with: config, versions, catalogue, models."""

    config: ServingConfig
    versions: Versions
    catalog: Catalog
    models: Callable[[str], Any]
    model_versions: dict[str, str]
    wanted_versions: dict[str, str]
    runtime: Any
    # Canonical JSON of (versions, served models, wanted models), part of every cache key.
    key: str = ""

    def unloadable(self, result: RecResult) -> bool:
        """Whether a strategy the answer skipped has an active version that this process
        could not load (a corrupt or missing file): the list lacks a model it should have,
        so it is degraded (and not cached), unlike a strategy with no active version."""
        return any(name in self.wanted_versions for name in result.skipped)


@dataclass
class UserAsk:
    """One per-user list request: what the view or the fast path parsed, then what the stages
    found. ``peeked``: a cache lookup already made for this request (the fast path's miss)."""

    user_id: str
    req: RecRequest
    explain: bool = False
    shed: bool = False
    assignment: dict | None = None
    peeked: Peek | None = None
    snapshot: Snapshot | None = None


@dataclass
class UserAnswer:
    route: str
    body: bytes
    cached: bool
    snapshot: Snapshot


def user_request(q: dict[str, Any], exclude: list[str], adm: Any) -> RecRequest:
    """The ``RecRequest`` of a valid recommendations query (``RecQuery``'s fields, ``exclude``
    already split) under ``adm``, the request's ``recsys.serving.admission.Admission``: the
    view's and the fast path's."""
    return RecRequest(
        n=q["n"],
        offset=q["offset"],
        category=q["category"],
        exclude=exclude,
        explain=q["explain"],
        deadline_s=adm.deadline_s,
        priority=adm.priority,
    )
