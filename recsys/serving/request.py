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
    """Whether a serialised answer is marked degraded.

    Parameters
    ----------
    body : bytes
        The answer's JSON body (compact, sorted keys).

    Returns
    -------
    bool
        True when it holds ``"degraded":true``.
    """
    return _DEGRADED in body


def mark_cached(body: bytes) -> bytes:
    """A stored body (``"cached": false``) as a cache hit answers it.

    Parameters
    ----------
    body : bytes
        The stored JSON body (compact, sorted keys).

    Returns
    -------
    bytes
        The body with its ``cached`` key set to true.
    """
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
        so it is degraded (and not cached), unlike a strategy with no active version.

        Parameters
        ----------
        result : RecResult
            The answer (its ``skipped`` strategies are looked at).

        Returns
        -------
        bool
            True when some skipped strategy is in ``wanted_versions``.
        """
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
    """A per-user list answer: the ``route`` it took, the serialised ``body``, whether it came
    from the cache, and the snapshot it was served with.
    """

    route: str
    body: bytes
    cached: bool
    snapshot: Snapshot


def user_request(q: dict[str, Any], exclude: list[str], adm: Any) -> RecRequest:
    """The ``RecRequest`` of a valid recommendations query: the view's and the fast path's.

    Parameters
    ----------
    q : dict
        ``RecQuery``'s fields (``n``, ``offset``, ``category``, ``explain``), validated.
    exclude : list of str
        External item ids to leave out, already split.
    adm : Admission
        The request's ``recsys.serving.admission.Admission`` (its deadline and priority).

    Returns
    -------
    RecRequest
        The request the pipeline serves.
    """
    return RecRequest(
        n=q["n"],
        offset=q["offset"],
        category=q["category"],
        exclude=exclude,
        explain=q["explain"],
        deadline_s=adm.deadline_s,
        priority=adm.priority,
    )
