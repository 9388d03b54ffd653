"""The serving configuration: which strategies serve, their blend weights, the routes (cold,
warm, or the learned profile's routes by history length) and the business-rule settings.

``ServingConfig`` is what the admin API edits (as a dict: ``to_dict`` / ``from_dict``) and what
the ``Recommender`` reads. The routing keys, their defaults and rules are declared once, in
``ROUTING``.

Over 500 lines with its docstrings; about 300 lines of code.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from features.interactions import EVENT_TYPES
from strategies import STRATEGY_NAMES

BLEND_METHODS = ("weighted", "rrf")
NORMALIZATIONS = ("minmax", "rank")
ROUTES = ("cold", "warm")

# Blend weights shipped for strategies that do not weigh 1.0; every strategy of strategies/ is
# enabled by default, and is called only where a route names it.
SHIPPED_WEIGHTS = {"popular": 0.3, "bpr": 0.5}


# -- bounds ---------------------------------------------------------------------------------
# What serving can do, declared once: the admin API (recsys.web.api.admin, its schemas), the
# experiments' variant overrides and the console's forms all validate through ``ServingConfig``
# and these bounds, and docs/admin-bounds.md lists them (a test keeps it in step).
MAX_WEIGHT = 1000.0  # a strategy's global weight, a learned route's weight: 0..MAX_WEIGHT
MAX_COLD_THRESHOLD = 10_000
MAX_RRF_K = 1000
MAX_PER_CATEGORY = 1000
MAX_CANDIDATES = 10_000
MAX_ROUTES = 8
MAX_ROUTE_HISTORY = 1_000_000


def _names_list(v: Any, names: tuple[str, ...], least: int) -> bool:
    """A list of distinct known names, ``least..len(names)`` long."""
    return (
        isinstance(v, list | tuple)
        and least <= len(v) <= len(names)
        and all(isinstance(s, str) and s in names for s in v)
        and len(set(v)) == len(v)
    )


def _strategy_list(v: Any) -> bool:
    return _names_list(v, STRATEGY_NAMES, 1)


_STRATEGY_LIST_RULE = (
    f"a list of 1..{len(STRATEGY_NAMES)} distinct strategies of {list(STRATEGY_NAMES)}"
)


@dataclass(frozen=True)
class _Setting:
    """One ``routing`` setting: its shipped default, the check a value must pass and how the
    rule reads in the error (``routing.<key> must be <rule>``), and the conversion into
    ``ServingConfig``'s field. The one place each default and bound is written: ``low`` /
    ``high`` (numbers) and ``max_items`` (lists) repeat the bound for the request schemas."""

    default: Any
    ok: Callable[[Any], bool]
    rule: str
    convert: Callable[[Any], Any] = lambda v: v
    low: float | None = None
    high: float | None = None
    max_items: int | None = None


def _int_setting(default: Any, low: int, high: int, *, nullable: bool = False) -> _Setting:
    rule = f"an integer in {low}..{high}"
    return _Setting(
        default,
        lambda v: (nullable and v is None) or (_is_int(v) and low <= v <= high),
        f"null or {rule}" if nullable else rule,
        low=low,
        high=high,
    )


# The routing settings, in the order they are checked (the first bad one is reported).
ROUTING: dict[str, _Setting] = {
    # Distinct positive items below which a user is cold.
    "cold_threshold": _int_setting(5, 0, MAX_COLD_THRESHOLD),
    "cold_strategies": _Setting(
        ["content", "popular"],
        _strategy_list,
        _STRATEGY_LIST_RULE,
        tuple,
        max_items=len(STRATEGY_NAMES),
    ),
    # ALS and BPR are trained and can be switched in live; without them the blend scored
    # higher on both ml-100k and Online Retail (README, "Evaluation and experiments") and an
    # uncached request costs less CPU (docs/design-notes.md).
    "warm_strategies": _Setting(
        ["ease", "deep", "popular"],
        _strategy_list,
        _STRATEGY_LIST_RULE,
        tuple,
        max_items=len(STRATEGY_NAMES),
    ),
    "blend": _Setting("weighted", lambda v: v in BLEND_METHODS, f"one of {list(BLEND_METHODS)}"),
    # Per-strategy score scaling for "weighted".
    "normalize": _Setting(
        "minmax", lambda v: v in NORMALIZATIONS, f"one of {list(NORMALIZATIONS)}"
    ),
    "rrf_k": _Setting(
        60,
        lambda v: _is_num(v) and 1 <= v <= MAX_RRF_K,
        f"a number in 1..{MAX_RRF_K}",
        low=1,
        high=MAX_RRF_K,
    ),
    # Diversity cap per primary category.
    "max_per_category": _int_setting(None, 1, MAX_PER_CATEGORY, nullable=True),
    # Drop items the user already has (``seen_types``); dislikes are always dropped.
    "exclude_seen": _Setting(True, lambda v: isinstance(v, bool), "true or false"),
    "seen_types": _Setting(
        ["purchase", "rating"],
        lambda v: _names_list(v, EVENT_TYPES, 0),
        f"a list of 0..{len(EVENT_TYPES)} distinct event types of {list(EVENT_TYPES)}",
        tuple,
        max_items=len(EVENT_TYPES),
    ),
    "candidates_per_strategy": _int_setting(200, 1, MAX_CANDIDATES),
    # Learned routes (a serving profile, recsys.offline.tuning): when set, they replace the
    # cold/warm pair above. See ``Route``; checked by ``_parse_routes``.
    "routes": _Setting(
        None,
        lambda v: True,
        f"null or a list of 1..{MAX_ROUTES} routes",
        lambda v: _parse_routes(v),
        max_items=MAX_ROUTES,
    ),
}

# The rules of the strategies' settings (``strategies.<name>.<field> must be <rule>``).
STRATEGY_RULES = {
    "enabled": "true or false",
    "weight": f"a number in 0..{MAX_WEIGHT:g}",
}


def bounds() -> list[tuple[str, str]]:
    """Every admin-settable value and its rule, as the docs list them.

    Returns
    -------
    list of tuple of (str, str)
        ``(key, rule)`` pairs: ``strategies.<name>.enabled|weight``, each ``routing.<key>``
        and the fields of a learned route (``routing.routes[i].*``).
    """
    rows = [(f"strategies.<name>.{f}", rule) for f, rule in STRATEGY_RULES.items()]
    rows += [(f"routing.{key}", setting.rule) for key, setting in ROUTING.items()]
    rows += [
        ("routing.routes[i].name", "1-32 letters, digits or _.+- characters, unique"),
        (
            "routing.routes[i].max_history",
            f"an integer in 0..{MAX_ROUTE_HISTORY}, increasing; null on the last route",
        ),
        ("routing.routes[i].weights.<strategy>", f"a number in 0..{MAX_WEIGHT:g}"),
        ("routing.routes[i].blend", f"null or one of {list(BLEND_METHODS)}"),
    ]
    return rows


# Shipped defaults, derived from the declarations above. Admin settings
# (recsys.serving.settings_store) and
# experiment variants are overrides of exactly this shape, merged with with_overrides.
DEFAULT_CONFIG: dict[str, Any] = {
    "strategies": {
        name: {"enabled": True, "weight": SHIPPED_WEIGHTS.get(name, 1.0)} for name in STRATEGY_NAMES
    },
    "routing": {key: copy.deepcopy(setting.default) for key, setting in ROUTING.items()},
    # The serving profile these settings came from (its version), for ``explain``.
    "profile": None,
}
_ROUTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,31}$")


# -- configuration --------------------------------------------------------------------------
@dataclass(frozen=True)
class StrategyConfig:
    """One strategy's global serving settings.

    Parameters
    ----------
    enabled : bool
        False: the strategy is never called, on any route.
    weight : float
        Global blend weight (>= 0), multiplied into every route's weight.
    """

    enabled: bool = True
    weight: float = 1.0


@dataclass(frozen=True)
class Route:
    """One learned route: users whose history (distinct positive items) is at most
    ``max_history`` (``None``: any length) and above the previous route's bound.

    Parameters
    ----------
    name : str
        1-32 letters, digits or ``_.+-`` characters, unique among the routes.
    max_history : int or None
        Upper bound (inclusive) of the route's history length; ``None`` for the last route.
    weights : Mapping of str to float
        The strategies this route blends and their weights (0 or absent: not called);
        each is multiplied by the strategy's global weight, so an operator can still turn one
        strategy down or off everywhere.
    blend : str or None
        This route's fusion method (one of ``BLEND_METHODS``); ``None``: the global
        ``routing.blend``.
    """

    name: str
    max_history: int | None
    weights: Mapping[str, float]
    blend: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The route as the ``routing.routes`` entry it was parsed from.

        Returns
        -------
        dict of str to Any
            Keys ``name``, ``max_history``, ``weights`` (a plain dict) and ``blend``.
        """
        return {
            "name": self.name,
            "max_history": self.max_history,
            "weights": dict(self.weights),
            "blend": self.blend,
        }


def _parse_routes(raw: Any) -> tuple[Route, ...]:
    """Validate ``routing.routes`` (None: no learned routes)."""
    if raw is None:
        return ()
    if not isinstance(raw, list | tuple) or not 1 <= len(raw) <= MAX_ROUTES:
        raise ValueError(f"routing.routes must be {ROUTING['routes'].rule}")
    out: list[Route] = []
    for i, r in enumerate(raw):
        where = f"routing.routes[{i}]"
        if not isinstance(r, Mapping):
            raise ValueError(f"{where} must be an object")
        bad = set(r) - {"name", "max_history", "weights", "blend"}
        if bad:
            raise ValueError(f"{where}: unknown keys {sorted(bad)}")
        name = r.get("name")
        if not isinstance(name, str) or not _ROUTE_NAME.match(name):
            raise ValueError(f"{where}.name must be 1-32 letters, digits or _.+- characters")
        if name in {x.name for x in out}:
            raise ValueError(f"{where}.name {name!r} is used twice")
        mh = r.get("max_history")
        last = i == len(raw) - 1
        if last and mh is not None:
            raise ValueError(f"{where}.max_history must be null: the last route takes the rest")
        if not last:
            if not _is_int(mh) or not 0 <= mh <= MAX_ROUTE_HISTORY:
                raise ValueError(
                    f"{where}.max_history must be an integer in 0..{MAX_ROUTE_HISTORY}"
                )
            if out and mh <= out[-1].max_history:
                raise ValueError("routing.routes must have increasing max_history")
        weights = r.get("weights")
        if not isinstance(weights, Mapping):
            raise ValueError(f"{where}.weights must be an object")
        for s, w in weights.items():
            if s not in STRATEGY_NAMES:
                raise ValueError(f"{where}.weights: unknown strategy {s!r}")
            if not _is_num(w) or not 0 <= w <= MAX_WEIGHT:
                raise ValueError(f"{where}.weights.{s} must be a number in 0..{MAX_WEIGHT:g}")
        blend = r.get("blend")
        if blend is not None and blend not in BLEND_METHODS:
            raise ValueError(f"{where}.blend must be one of {BLEND_METHODS} or null")
        out.append(Route(name, mh, {s: float(w) for s, w in weights.items()}, blend))
    return tuple(out)


def _deep_merge(base: dict, over: Mapping) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class ServingConfig:
    """What the request path does. The dict shape (``to_dict`` / ``from_dict``) is
    ``{"strategies": {name: {"enabled": bool, "weight": number >= 0}},  # any of STRATEGY_NAMES
    "routing": {...ROUTING...}, "profile": null | version}``; the routing keys, their defaults
    and rules are declared once, in ``ROUTING``.

    Built by ``from_dict`` (``default()``: the shipped defaults): missing keys take the
    defaults (``DEFAULT_CONFIG``); unknown keys or bad values raise ``ValueError`` with a
    message naming the key.

    Parameters
    ----------
    strategies : Mapping of str to StrategyConfig
        Per strategy name: enabled and global weight.
    cold_threshold, cold_strategies, warm_strategies, blend, normalize, rrf_k
        The ``routing`` settings of the same names, as converted by ``ROUTING`` (lists
        become tuples).
    max_per_category, exclude_seen, seen_types, candidates_per_strategy
        Likewise.
    routes : tuple of Route
        Learned routes replacing cold/warm; empty: none.
    profile : str or None
        Version of the serving profile the settings came from; ``None``: none.
    """

    strategies: Mapping[str, StrategyConfig]
    cold_threshold: int
    cold_strategies: tuple[str, ...]
    warm_strategies: tuple[str, ...]
    blend: str
    normalize: str
    rrf_k: int
    max_per_category: int | None
    exclude_seen: bool
    seen_types: tuple[str, ...]
    candidates_per_strategy: int
    routes: tuple[Route, ...]
    profile: str | None

    @classmethod
    def default(cls) -> ServingConfig:
        """The shipped defaults (``from_dict({})``).

        Returns
        -------
        ServingConfig
        """
        return cls.from_dict({})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ServingConfig:
        """Validate ``data`` (merged over the defaults) into a config.

        Parameters
        ----------
        data : Mapping of str to Any or None
            The dict shape of the class docstring, any part of it; ``None``: the defaults.

        Returns
        -------
        ServingConfig

        Raises
        ------
        ValueError
            For an unknown key or a bad value; the message names the key.
        """
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ValueError("config must be an object")
        unknown = set(data) - {"strategies", "routing", "profile"}
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        merged = _deep_merge(DEFAULT_CONFIG, data)
        strategies = merged["strategies"]
        if not isinstance(strategies, Mapping):
            raise ValueError("strategies must be an object")
        parsed: dict[str, StrategyConfig] = {}
        for name, sc in strategies.items():
            if name not in STRATEGY_NAMES:
                raise ValueError(f"unknown strategy {name!r}; expected one of {STRATEGY_NAMES}")
            if not isinstance(sc, Mapping):
                raise ValueError(f"strategies.{name} must be an object")
            bad = set(sc) - {"enabled", "weight"}
            if bad:
                raise ValueError(f"strategies.{name}: unknown keys {sorted(bad)}")
            enabled, weight = sc.get("enabled", True), sc.get("weight", 1.0)
            if not isinstance(enabled, bool):
                raise ValueError(f"strategies.{name}.enabled must be {STRATEGY_RULES['enabled']}")
            if not _is_num(weight) or not 0 <= weight <= MAX_WEIGHT:
                raise ValueError(f"strategies.{name}.weight must be {STRATEGY_RULES['weight']}")
            parsed[name] = StrategyConfig(enabled=enabled, weight=float(weight))

        r = merged["routing"]
        if not isinstance(r, Mapping):
            raise ValueError("routing must be an object")
        bad = set(r) - set(ROUTING)
        if bad:
            raise ValueError(f"routing: unknown keys {sorted(bad)}")
        routing = {}
        for key, setting in ROUTING.items():
            if not setting.ok(r[key]):
                raise ValueError(f"routing.{key} must be {setting.rule}")
            routing[key] = setting.convert(r[key])
        profile = merged.get("profile")
        if profile is not None and not isinstance(profile, str):
            raise ValueError("profile must be null or a version string")
        return cls(strategies=parsed, profile=profile, **routing)

    def to_dict(self) -> dict[str, Any]:
        """The complete dict shape (``from_dict`` of it gives an equal config).

        Returns
        -------
        dict of str to Any
            ``strategies``, ``routing`` (tuples as lists, ``routes`` as dicts or None) and
            ``profile``.
        """
        return {
            "strategies": {
                name: {"enabled": sc.enabled, "weight": sc.weight}
                for name, sc in self.strategies.items()
            },
            "routing": {
                key: (
                    ([x.to_dict() for x in self.routes] if self.routes else None)
                    if key == "routes"
                    else (list(v) if isinstance(v := getattr(self, key), tuple) else v)
                )
                for key in ROUTING
            },
            "profile": self.profile,
        }

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> ServingConfig:
        """A new config: ``overrides`` (same dict shape, partial) deep-merged over this one.

        Parameters
        ----------
        overrides : Mapping of str to Any or None
            Partial dict shape; ``None`` or empty: this config itself is returned.

        Returns
        -------
        ServingConfig

        Raises
        ------
        ValueError
            If the merged config is invalid.
        """
        if not overrides:
            return self
        return ServingConfig.from_dict(_deep_merge(self.to_dict(), overrides))

    def weight(self, strategy: str) -> float:
        """A strategy's global blend weight.

        Parameters
        ----------
        strategy : str
            Strategy name.

        Returns
        -------
        float
            0.0 for a strategy without settings.
        """
        sc = self.strategies.get(strategy)
        return sc.weight if sc else 0.0

    def enabled(self, strategy: str) -> bool:
        """Whether a strategy is enabled.

        Parameters
        ----------
        strategy : str
            Strategy name.

        Returns
        -------
        bool
            False for a strategy without settings.
        """
        sc = self.strategies.get(strategy)
        return bool(sc and sc.enabled)

    def route_for(self, n_history: int) -> str:
        """The route of a user with ``n_history`` distinct positive items.

        Parameters
        ----------
        n_history : int
            Distinct positive items in the user's history.

        Returns
        -------
        str
            A learned route's name, else ``"warm"`` (at least ``cold_threshold``) or ``"cold"``.
        """
        if self.routes:
            for r in self.routes:
                if r.max_history is None or n_history <= r.max_history:
                    return r.name
        return "warm" if n_history >= self.cold_threshold else "cold"

    def _route(self, route: str | None) -> Route | None:
        if route is None or not self.routes:
            return None
        return next((r for r in self.routes if r.name == route), None)

    def route_strategies(self, route: str) -> list[str]:
        """The enabled strategies a route calls.

        Parameters
        ----------
        route : str
            A learned route's name, or ``"cold"``/``"warm"`` (any other name: the warm list).

        Returns
        -------
        list of str
            Strategy names with a weight > 0 on a learned route, else the cold or warm list;
            disabled strategies dropped.
        """
        learned = self._route(route)
        if learned is not None:
            names = [s for s, w in learned.weights.items() if w > 0]
        else:
            names = self.cold_strategies if route == "cold" else self.warm_strategies
        return [s for s in names if self.enabled(s)]

    def route_weight(self, route: str | None, strategy: str) -> float:
        """A strategy's blend weight on ``route``: the route's own weight (learned routes)
        times the strategy's global weight.

        Parameters
        ----------
        route : str or None
            Route name; ``None`` or not a learned route: the global weight alone.
        strategy : str
            Strategy name.

        Returns
        -------
        float
        """
        learned = self._route(route)
        if learned is not None:
            return learned.weights.get(strategy, 0.0) * self.weight(strategy)
        return self.weight(strategy)

    def route_blend(self, route: str | None) -> str:
        """The fusion method of a route.

        Parameters
        ----------
        route : str or None
            Route name.

        Returns
        -------
        str
            The learned route's own ``blend`` where set, else the global ``blend``.
        """
        learned = self._route(route)
        return learned.blend if learned is not None and learned.blend else self.blend

    def route_names(self) -> list[str]:
        """Names of the routes in force.

        Returns
        -------
        list of str
            The learned routes' names, in order, else ``["cold", "warm"]``.
        """
        return [r.name for r in self.routes] if self.routes else list(ROUTES)


# -- request / history / result -------------------------------------------------------------
