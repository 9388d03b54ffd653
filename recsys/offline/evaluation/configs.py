"""Evaluation configurations: what ``recsys evaluate --config X`` compares.

A configuration is a name, a serving override (exactly the dict shape that
``recsys.core.recommender.ServingConfig.with_overrides`` takes, the same shape online experiments
use for their variants) and optional model hyperparameters per strategy. ``--config`` accepts:

* ``default``: the service's shipped default (``ServingConfig()``: router + blend out of the box);
* ``tuned``: what ``recsys tune`` would choose, searched on the training part only (a validation
  slice cut from it the way the test part was cut), then evaluated like any configuration;
* ``ranked``: ``tuned`` with the learned second stage (``recsys.core.ranker``) trained on the
  same validation rows, kept only where its guard finds it not worse than the blend;
* a strategy name (``popular``, ``content``, ``als``, ``bpr``, ``ease``, ``deep``,
  ``sequence``): that strategy alone serves every user, cold and warm;
* a path to a ``.toml`` or ``.json`` file::

      name = "ease-rrf"                  # optional; the file name without extension otherwise
      description = "EASE + ALS fused by reciprocal rank"

      [serving.routing]                  # ServingConfig.with_overrides(...) dict
      blend = "rrf"
      cold_threshold = 3
      warm_strategies = ["ease", "als"]
      [serving.strategies.ease]
      weight = 2.0

      [params.ease]                      # strategy hyperparameters (its __init__ kwargs)
      l2 = 400.0

  JSON files carry the same keys.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field
from typing import Any

DEFAULT_NAME = "default"
TUNED_NAME = "tuned"
RANKED_NAME = "ranked"
_ALLOWED_KEYS = {"name", "description", "serving", "params"}


class ConfigError(ValueError):
    """A configuration file or name that cannot be used (message says why)."""


@dataclass
class EvalConfig:
    """One configuration an evaluation compares (``--config``).

    Attributes
    ----------
    name : str
        Its name in the report (unique within a run: ``load_configs``).
    serving : dict[str, Any]
        Override for ``ServingConfig.with_overrides``; empty means the shipped default.
    params : dict[str, dict[str, Any]]
        Strategy name -> hyperparameters passed to the strategy class.
    description : str
        Free text for the report.
    source : str
        Where it came from: ``default``, ``tuned``, a strategy name or a file path; "" for one
        built in code.
    tune : bool
        True: searched on the training part (``recsys.offline.tuning``) before training,
        ``serving`` and ``params`` then come from the resulting profile.
    """

    name: str
    # Override dict for ServingConfig.with_overrides; empty means the shipped default.
    serving: dict[str, Any] = field(default_factory=dict)
    # Hyperparameters per strategy, passed to the strategy class's __init__.
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""
    source: str = ""
    # Searched on the training part (recsys.offline.tuning) before training: serving and params are
    # filled in from the resulting profile.
    tune: bool = False
    # ``ranked``: the tuned profile with the learned ranker (``recsys.core.ranker``) on top,
    # trained on the same validation rows of the training part; filled in by the tuner.
    rank: bool = False
    ranker: Any = None
    ranker_report: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain data for the report.

        Returns
        -------
        dict[str, Any]
            ``name``, ``tune``, ``description``, ``source``, ``serving`` and ``params``.
        """
        return {
            "name": self.name,
            "tune": self.tune,
            "description": self.description,
            "source": self.source,
            "serving": self.serving,
            "params": self.params,
            **({"ranker": self.ranker_report} if self.rank else {}),
        }


def single_strategy_overrides(name: str) -> dict[str, Any]:
    """Serving override under which ``name`` alone serves every user (cold and warm).

    Parameters
    ----------
    name : str
        A served strategy name (``strategies.STRATEGY_NAMES``).

    Returns
    -------
    dict[str, Any]
        ``{"strategies": ..., "routing": ...}``: every other strategy disabled, ``name``
        enabled with weight 1.0 on both routes.
    """
    from strategies import STRATEGY_NAMES as SERVED

    strategies = {s: {"enabled": s == name} for s in SERVED}
    strategies[name] = {"enabled": True, "weight": 1.0}
    return {
        "strategies": strategies,
        "routing": {"cold_strategies": [name], "warm_strategies": [name]},
    }


def load_config(spec: str) -> EvalConfig:
    """Resolve one ``--config`` value: ``default``, a strategy name, or a TOML/JSON file.

    Parameters
    ----------
    spec : str
        ``default``, ``tuned``, ``ranked``, a strategy name, or the path of a ``.toml`` /
        ``.json`` file.

    Returns
    -------
    EvalConfig
        The configuration (named after the file's ``name`` key, else its base name).

    Raises
    ------
    ConfigError
        ``spec`` is none of those, or the file cannot be parsed or validated.
    """
    from strategies import STRATEGY_NAMES

    if spec == DEFAULT_NAME:
        return EvalConfig(
            name=DEFAULT_NAME, description="shipped default (router + blend)", source=spec
        )
    if spec == TUNED_NAME:
        return EvalConfig(
            name=TUNED_NAME,
            description="self-tuned on the training part (recsys tune)",
            source=spec,
            tune=True,
        )
    if spec == RANKED_NAME:
        return EvalConfig(
            name=RANKED_NAME,
            description="self-tuned, then a learned ranker over the candidates",
            source=spec,
            tune=True,
            rank=True,
        )
    if spec in STRATEGY_NAMES:
        return EvalConfig(
            name=spec,
            serving=single_strategy_overrides(spec),
            description=f"{spec} alone for every user",
            source=spec,
        )
    if not os.path.isfile(spec):
        raise ConfigError(
            f"--config {spec!r} is neither a file, 'default', 'tuned', nor a strategy name "
            f"({', '.join(STRATEGY_NAMES)})"
        )
    ext = os.path.splitext(spec)[1].lower()
    try:
        if ext == ".toml":
            with open(spec, "rb") as f:
                raw = tomllib.load(f)
        elif ext == ".json":
            with open(spec) as f:
                raw = json.load(f)
        else:
            raise ConfigError(f"{spec}: configuration files must end in .toml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{spec}: cannot parse: {e}") from e
    return config_from_dict(raw, source=spec)


def config_from_dict(raw: dict[str, Any], source: str = "") -> EvalConfig:
    """Validate a parsed configuration (file contents or a notebook's dict).

    Parameters
    ----------
    raw : dict[str, Any]
        Keys among ``name``, ``description``, ``serving`` and ``params``.
    source : str
        Where it came from (the file path), for messages and the default name; "" for none.

    Returns
    -------
    EvalConfig
        The validated configuration.

    Raises
    ------
    ConfigError
        Not a mapping, unknown keys, params for unknown strategies, or an invalid serving
        override.
    """
    from strategies import STRATEGY_NAMES

    if not isinstance(raw, dict):
        raise ConfigError(f"{source or 'config'}: top level must be a table/object")
    unknown = set(raw) - _ALLOWED_KEYS
    if unknown:
        raise ConfigError(
            f"{source or 'config'}: unknown keys {sorted(unknown)} "
            f"(allowed: {sorted(_ALLOWED_KEYS)})"
        )
    name = raw.get("name") or (
        os.path.splitext(os.path.basename(source))[0] if source else "config"
    )
    serving = raw.get("serving", {})
    params = raw.get("params", {})
    if not isinstance(serving, dict):
        raise ConfigError(f"{name}: 'serving' must be a table/object")
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise ConfigError(f"{name}: 'params' must map strategy names to tables/objects")
    bad = [s for s in params if s not in STRATEGY_NAMES]
    if bad:
        raise ConfigError(f"{name}: params for unknown strategies {bad}")
    cfg = EvalConfig(
        name=str(name),
        serving=serving,
        params={k: dict(v) for k, v in params.items()},
        description=str(raw.get("description", "")),
        source=source,
    )
    serving_config(cfg)  # validate the override now, with a clear message
    return cfg


def serving_config(cfg: EvalConfig):
    """The ServingConfig this evaluation configuration stands for.

    Parameters
    ----------
    cfg : EvalConfig
        The evaluation configuration.

    Returns
    -------
    ServingConfig
        The shipped default with ``cfg.serving`` applied.

    Raises
    ------
    ConfigError
        The serving override is invalid.
    """
    from recsys.core.config import ServingConfig

    try:
        return ServingConfig.default().with_overrides(cfg.serving)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"{cfg.name}: invalid serving override: {e}") from e


def load_configs(specs: list[str | EvalConfig]) -> list[EvalConfig]:
    """Resolve every ``--config``; a repeated name gets a suffix (``popular``, ``popular#2``).

    Parameters
    ----------
    specs : list[str or EvalConfig]
        ``--config`` values (see ``load_config``) or configurations already built.

    Returns
    -------
    list[EvalConfig]
        One per spec, in order, with unique names.

    Raises
    ------
    ConfigError
        A spec cannot be resolved.
    """
    out: list[EvalConfig] = []
    seen: dict[str, int] = {}
    for spec in specs:
        cfg = spec if isinstance(spec, EvalConfig) else load_config(spec)
        if cfg.name in seen:
            seen[cfg.name] += 1
            cfg = EvalConfig(**{**cfg.__dict__, "name": f"{cfg.name}#{seen[cfg.name]}"})
        else:
            seen[cfg.name] = 1
        out.append(cfg)
    return out
