"""Serving profiles: what ``recsys tune`` chose, stored and served like a model version.

A profile is the routes (learned history buckets, each with its strategies, weights and fusion
method), the strategy hyperparameters the chosen models were fitted with, the model versions
refitted on all data, the validation figures per route and the search trace. It is written into
the model repository as kind ``profile`` (``MODEL_DIR/profile/<version>/profile.json`` with the
repository's manifest of checksums and a ``model_versions`` row), so listing, checksums,
activation history and rollback are the ones models have.

Activation is one transaction: the profile row becomes the active one and ``config_version`` is
bumped together, so every worker reloads its configuration (and every cached list goes stale)
at once. The model versions the profile names are activated first (each verified); a profile
whose models are missing or corrupt is refused and nothing changes.

The serving configuration is ``defaults <- active profile <- admin overrides``: an operator's
toggles and weights still apply on top of a profile (a route's weight is multiplied by the
strategy's global weight; disabling a strategy removes it from every route).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Self

from sqlalchemy import select
from sqlalchemy.orm import Session

from recsys.errors import ModelError
from recsys.models.activation import lock_strategy, switch_active
from recsys.models.repository import PROFILE_KIND

log = logging.getLogger(__name__)

PROFILE_FILE = "profile.json"
FORMAT = 1


@dataclass
class ServingProfile:
    """A tuned serving profile (see the module docstring)."""

    name: ClassVar[str] = PROFILE_KIND

    routes: list[dict[str, Any]]
    blend: str = "weighted"
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    objective: str = "ndcg@10"
    validation: dict[str, Any] = field(default_factory=dict)
    guard: dict[str, Any] = field(default_factory=dict)
    trace: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    created_at: str | None = None
    version: str | None = None  # set once stored

    # -- what it means for serving ----------------------------------------------------------
    def strategies(self) -> list[str]:
        """Strategies some route calls (weight > 0), plus popular (the request path's fallback).

        Returns
        -------
        list of str
            Strategy names, sorted.
        """
        names = {s for r in self.routes for s, w in r["weights"].items() if w > 0}
        names.add("popular")
        return sorted(names)

    def serving_overrides(self) -> dict[str, Any]:
        """The ``ServingConfig.with_overrides`` dict this profile stands for.

        Returns
        -------
        dict
            ``strategies`` (each called strategy enabled at weight 1), ``routing`` (routes and
            blend) and ``profile`` (this version, None before it is stored).
        """
        return {
            "strategies": {s: {"enabled": True, "weight": 1.0} for s in self.strategies()},
            "routing": {"routes": [dict(r) for r in self.routes], "blend": self.blend},
            "profile": self.version,
        }

    def check(self) -> Self:
        """Validate the routes through ``ServingConfig`` (raises ValueError with the reason).

        Returns
        -------
        ServingProfile
            ``self``, valid.

        Raises
        ------
        ValueError
            Routes ``ServingConfig`` refuses (the message says why).
        """
        from recsys.core.config import ServingConfig

        ServingConfig.default().with_overrides(self.serving_overrides())
        return self

    def to_dict(self) -> dict[str, Any]:
        """The profile as the JSON object ``profile.json`` holds.

        Returns
        -------
        dict
            ``format`` plus every field of the dataclass.
        """
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        """A profile from what ``to_dict`` wrote, checked (unknown keys are ignored).

        Parameters
        ----------
        raw : dict
            The parsed ``profile.json``.

        Returns
        -------
        ServingProfile
            The validated profile.

        Raises
        ------
        ValueError
            Not a profile of this ``FORMAT``, or routes that ``ServingConfig`` refuses.
        """
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ValueError(f"not a serving profile of format {FORMAT}")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in raw.items() if k in known}).check()

    def summary(self) -> str:
        """One line per route, for the CLI and logs.

        Returns
        -------
        str
            One indented line per route: its history span, blend and nonzero weights.
        """
        lines = []
        lo = 0
        for r in self.routes:
            hi = r["max_history"]
            span = f"{lo}+" if hi is None else (f"{lo}" if hi == lo else f"{lo}-{hi}")
            w = ", ".join(f"{s} {v:.2f}" for s, v in sorted(r["weights"].items()) if v > 0)
            lines.append(f"  history {span:>7}: {r.get('blend') or self.blend:<8} {w}")
            lo = (hi or 0) + 1
        return "\n".join(lines)

    # -- repository persistence (the Strategy-like part the repository calls) ----------------
    def get_params(self) -> dict[str, Any]:
        """What the repository records as the version's params.

        Returns
        -------
        dict
            ``routes``, ``blend`` and ``params``.
        """
        return {"routes": self.routes, "blend": self.blend, "params": self.params}

    def save(self, path: str) -> None:
        """Write ``profile.json`` and ``params.json`` into ``path`` (created if missing).

        Parameters
        ----------
        path : str
            The version's artifact folder.

        Returns
        -------
        None
        """
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, PROFILE_FILE), "w") as f:
            json.dump(self.to_dict(), f, indent=1, sort_keys=True, default=_json_default)
        with open(os.path.join(path, "params.json"), "w") as f:
            json.dump({"name": PROFILE_KIND, "params": self.get_params()}, f, default=str)

    @classmethod
    def load(cls, path: str) -> Self:
        """Read the profile ``save`` wrote into ``path``.

        Parameters
        ----------
        path : str
            The version's artifact folder.

        Returns
        -------
        ServingProfile
            The validated profile (its ``version`` is set by ``load_profile``).

        Raises
        ------
        OSError, ValueError
            Missing file, bad JSON, or not a valid profile.
        """
        with open(os.path.join(path, PROFILE_FILE)) as f:
            return cls.from_dict(json.load(f))


def _json_default(x: Any) -> Any:
    import numpy as np

    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


# -- the repository side -------------------------------------------------------------------------
def save_profile(repo, profile: ServingProfile, actor: str = "cli") -> str:
    """Store ``profile`` as a new (inactive) version.

    Parameters
    ----------
    repo : ModelRepository
        Where the version is stored.
    profile : ServingProfile
        The profile (checked first; its ``version`` is set to the new id).
    actor : str, optional
        Who stores it.

    Returns
    -------
    str
        The new version id.
    """
    profile.check()
    metrics = dict(profile.validation.get("overall", {}))
    metrics["guard"] = profile.guard.get("verdict")
    version = repo.save_version(profile, None, metrics)
    profile.version = version
    return version


def load_profile(repo, version: str) -> ServingProfile:
    """Verify (manifest and file checksums, the SQL row being the root of trust) then load.

    Parameters
    ----------
    repo : ModelRepository
        The repository holding the profile.
    version : str
        The profile's version id.

    Returns
    -------
    ServingProfile
        The profile, its ``version`` set.

    Raises
    ------
    ModelError
        Unknown version, failed verification, or an unreadable profile.
    """
    path = repo.verified_path(PROFILE_KIND, version)
    try:
        profile = ServingProfile.load(path)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ModelError(f"{PROFILE_KIND}/{version}: unusable profile: {e}") from e
    profile.version = version
    return profile


def active_profile(repo) -> ServingProfile | None:
    """The active serving profile, verified and loaded.

    Parameters
    ----------
    repo : ModelRepository
        The repository holding the profiles.

    Returns
    -------
    ServingProfile or None
        The active profile; None when none is active.
    """
    version = repo.active_version(PROFILE_KIND)
    return load_profile(repo, version) if version else None


def list_profiles(repo) -> list[dict[str, Any]]:
    """Every stored serving profile (``ModelRepository.list_versions`` of the profile kind).

    Parameters
    ----------
    repo : ModelRepository
        The repository holding the profiles.

    Returns
    -------
    list of dict
        One description per version, oldest first.
    """
    return repo.list_versions(PROFILE_KIND)


def _activate_models(repo, profile: ServingProfile, actor: str, verify: bool = True) -> None:
    for strategy, version in sorted(profile.models.items()):
        repo.activate(strategy, version, actor=actor, verify=verify)


def activate_profile(repo, version: str, actor: str = "cli", reason: str = "") -> str | None:
    """Make ``version`` the active profile (its models first).

    Every model the profile names is verified before any is activated.

    Parameters
    ----------
    repo : ModelRepository
        The repository holding the profile and its models.
    version : str
        The profile's version id.
    actor : str, optional
        Who activates it (audit log, activation history).
    reason : str, optional
        Why, recorded with the config version bump (default: a generated one).

    Returns
    -------
    str or None
        The previously active profile; None: there was none.

    Raises
    ------
    ModelError
        Nothing changed: the profile fails its checksums or names a model version that is
        missing or corrupt.
    """
    profile = load_profile(repo, version)
    # Every model is verified before any is activated (so a corrupt one changes nothing),
    # and not verified a second time by the activation itself.
    for strategy, mv in profile.models.items():
        repo.verify_version(strategy, mv)
    _activate_models(repo, profile, actor, verify=False)
    return _switch(repo, version, actor, "activate", reason)


def rollback_profile(repo, actor: str = "cli") -> str:
    """Re-activate the profile that was active before the current one (and its models).

    Parameters
    ----------
    repo : ModelRepository
        The repository holding the profiles.
    actor : str, optional
        Who rolls back.

    Returns
    -------
    str
        The version now active.

    Raises
    ------
    ModelError
        409 when no profile was active before this one.
    """
    target = repo.rollback_target(PROFILE_KIND)
    if target is None:
        raise ModelError("nothing to roll back to: no profile was active before this one", 409)
    profile = load_profile(repo, target)
    _activate_models(repo, profile, actor)
    _switch(repo, target, actor, "rollback")
    return target


def deactivate_profile(repo, actor: str = "cli") -> str | None:
    """Serve without a profile (the shipped cold/warm defaults).

    Parameters
    ----------
    repo : ModelRepository
        The repository holding the profiles.
    actor : str, optional
        Who deactivates it (audit log).

    Returns
    -------
    str or None
        The profile switched off; None when none was active (nothing changed).
    """
    from recsys.store.models import AuditLog, ModelVersion
    from recsys.store.versions import bump

    with repo.sessionmaker() as s, s.begin():
        rows = s.scalars(
            select(ModelVersion)
            .where(ModelVersion.strategy == PROFILE_KIND, ModelVersion.is_active.is_(True))
            .with_for_update()
        ).all()
        for r in rows:
            r.is_active = False
        previous = rows[0].version if rows else None
        if previous:
            s.add(
                AuditLog(
                    actor=actor,
                    action="profile.deactivate",
                    target=PROFILE_KIND,
                    before={"version": previous},
                    after={"version": None},
                )
            )
            bump(s, reason=f"profile {previous} deactivated")
    return previous


def _switch(repo, version: str, actor: str, kind: str, reason: str = "") -> str | None:
    """Flip the active profile row and bump ``config_version`` in one transaction."""
    from recsys.store.versions import bump

    with repo.sessionmaker() as s, s.begin():
        rows = lock_strategy(s, PROFILE_KIND)
        current = next((r for r in rows if r.is_active), None)
        target = next(r for r in rows if r.version == version)
        previous = current.version if current is not None else None
        # A rollback is recorded even onto the same version: the activation stack pops on it.
        if kind == "rollback" or previous != version:
            switch_active(s, PROFILE_KIND, rows, target, previous, actor, kind)
            bump(s, reason=(reason or f"profile {kind} {version}")[:200])
    repo.notify(PROFILE_KIND, version)
    return previous


def guard_note(s: Session, actor: str, profile: ServingProfile, activated: bool) -> None:
    """Audit a tuning outcome (activated or held back by the guard, and why).

    Parameters
    ----------
    s : Session
        The session the audit row is added to (the caller commits).
    actor : str
        Who tuned.
    profile : ServingProfile
        The tuned profile (its ``version`` and ``guard`` verdict are recorded).
    activated : bool
        Whether it was activated.

    Returns
    -------
    None
    """
    from recsys.store.models import AuditLog

    s.add(
        AuditLog(
            actor=actor,
            action="profile.tune",
            target=PROFILE_KIND,
            before=None,
            after={
                "version": profile.version,
                "activated": activated,
                "guard": profile.guard.get("verdict"),
                "reason": profile.guard.get("reason"),
            },
        )
    )
