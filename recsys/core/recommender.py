"""The scoring core: route -> candidates per strategy -> blend -> rules -> page.

The request path (``recsys.serving.pipeline``, which adds the snapshot, the cache, the history
read, the scoring turn and rendering around it) and offline evaluation (recsys.offline.evaluation)
both call ``Recommender``; there is no second implementation of routing, blending or business rules.

Stages (``recommend_batch`` reports each one's time to ``on_stage``):

* ``route(history)``: "cold" when the user has fewer than ``cold_threshold`` distinct positive
  items, else "warm" (or a learned route of the configuration).
* ``candidates``: every enabled strategy of the route scores its users in one batched
  ``recommend`` call (per category group), over-fetching ``candidates_per_strategy`` items so
  the business rules still leave ``n``. Strategies never filter beyond what they are handed.
* ``blend``: weighted fusion of per-strategy normalised scores ("weighted") or reciprocal-rank
  fusion ("rrf"); ``sources`` records each strategy's contribution per item.
* rules and page (``_page_of``): exclude seen items, request ``exclude``, category, unavailable
  items, at most ``max_per_category`` items per primary category, in rank order, stopping at
  the end of the page (``offset`` / ``n``).

Models come from a callable ``models(strategy) -> LoadedModel | None`` (recsys.models.repository's
LoadedModel, or any object with ``.model``, ``.items`` and ``.version``), so the same code runs
on the model runtime, on in-memory models in evaluation, and in tests.

Degradation policy: a strategy with no loaded model is *skipped* and does not make the answer
degraded (it is simply not deployed, e.g. no deep model trained). A strategy that raises or
misses the request deadline is *dropped* and the answer says ``degraded=True``; so does an
answer where no strategy of the route could serve and the fallback (popular) was used, or
nothing could serve at all.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import re
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from features.interactions import DEFAULT_WEIGHTS, EVENT_CODE, EVENT_TYPES, History, user_batch
from recsys.core.runners import Runner, run_inline
from strategies import STRATEGY_NAMES

log = logging.getLogger(__name__)

BLEND_METHODS = ("weighted", "rrf")
NORMALIZATIONS = ("minmax", "rank")
ROUTES = ("cold", "warm")

# Blend weights shipped for strategies that do not weigh 1.0; every strategy of strategies/ is
# enabled by default, and is called only where a route names it.
SHIPPED_WEIGHTS = {"popular": 0.3, "bpr": 0.5}


def _strategy_list(v: Any) -> bool:
    return isinstance(v, list | tuple) and all(s in STRATEGY_NAMES for s in v)


@dataclass(frozen=True)
class _Setting:
    """One ``routing`` setting: its shipped default, the check a value must pass and how the
    rule reads in the error (``routing.<key> must be <rule>``), and the conversion into
    ``ServingConfig``'s field. The one place each default is written."""

    default: Any
    ok: Callable[[Any], bool]
    rule: str
    convert: Callable[[Any], Any] = lambda v: v


# The routing settings, in the order they are checked (the first bad one is reported).
ROUTING: dict[str, _Setting] = {
    # Distinct positive items below which a user is cold.
    "cold_threshold": _Setting(5, lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "cold_strategies": _Setting(
        ["content", "popular"], _strategy_list, f"a list of {STRATEGY_NAMES}", tuple
    ),
    # ALS and BPR are trained and can be switched in live; without them the blend scored
    # higher on both ml-100k and Online Retail (README, "Evaluation and experiments") and an
    # uncached request costs ~1.5 ms less CPU.
    "warm_strategies": _Setting(
        ["ease", "deep", "popular"], _strategy_list, f"a list of {STRATEGY_NAMES}", tuple
    ),
    "blend": _Setting("weighted", lambda v: v in BLEND_METHODS, f"one of {BLEND_METHODS}"),
    # Per-strategy score scaling for "weighted".
    "normalize": _Setting("minmax", lambda v: v in NORMALIZATIONS, f"one of {NORMALIZATIONS}"),
    "rrf_k": _Setting(60, lambda v: _is_num(v) and v > 0, "a number > 0"),
    # Diversity cap per primary category.
    "max_per_category": _Setting(
        None, lambda v: v is None or (_is_int(v) and v >= 1), "null or an integer >= 1"
    ),
    # Drop items the user already has (``seen_types``); dislikes are always dropped.
    "exclude_seen": _Setting(True, lambda v: isinstance(v, bool), "true or false"),
    "seen_types": _Setting(
        ["purchase", "rating"],
        lambda v: isinstance(v, list | tuple) and all(t in EVENT_TYPES for t in v),
        f"a list of {EVENT_TYPES}",
        tuple,
    ),
    "candidates_per_strategy": _Setting(
        200, lambda v: _is_int(v) and 1 <= v <= 10_000, "an integer in 1..10000"
    ),
    # Learned routes (a serving profile, recsys.offline.tuning): when set, they replace the
    # cold/warm pair above. See ``Route``; checked by ``_parse_routes``.
    "routes": _Setting(None, lambda v: True, "", lambda v: _parse_routes(v)),
}

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
MAX_ROUTES = 8
_ROUTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,31}$")


# -- configuration --------------------------------------------------------------------------
@dataclass(frozen=True)
class StrategyConfig:
    enabled: bool = True
    weight: float = 1.0


@dataclass(frozen=True)
class Route:
    """One learned route: users whose history (distinct positive items) is at most
    ``max_history`` (``None``: any length) and above the previous route's bound.

    ``weights``: the strategies this route blends and their weights (0 or absent: not called);
    each is multiplied by the strategy's global weight, so an operator can still turn one
    strategy down or off everywhere. ``blend``: this route's fusion method (default: the
    global ``routing.blend``)."""

    name: str
    max_history: int | None
    weights: Mapping[str, float]
    blend: str | None = None

    def to_dict(self) -> dict[str, Any]:
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
        raise ValueError(f"routing.routes must be null or a list of 1..{MAX_ROUTES} routes")
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
            if not _is_int(mh) or mh < 0:
                raise ValueError(f"{where}.max_history must be an integer >= 0")
            if out and mh <= out[-1].max_history:
                raise ValueError("routing.routes must have increasing max_history")
        weights = r.get("weights")
        if not isinstance(weights, Mapping):
            raise ValueError(f"{where}.weights must be an object")
        for s, w in weights.items():
            if s not in STRATEGY_NAMES:
                raise ValueError(f"{where}.weights: unknown strategy {s!r}")
            if not _is_num(w) or not 0 <= w <= 1000:
                raise ValueError(f"{where}.weights.{s} must be a number in 0..1000")
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
        return cls.from_dict({})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ServingConfig:
        """Validate ``data`` (merged over the defaults) into a config; ``ValueError`` if bad."""
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
                raise ValueError(f"strategies.{name}.enabled must be true or false")
            if not _is_num(weight) or weight < 0:
                raise ValueError(f"strategies.{name}.weight must be a number >= 0")
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
        """A new config: ``overrides`` (same dict shape, partial) deep-merged over this one."""
        if not overrides:
            return self
        return ServingConfig.from_dict(_deep_merge(self.to_dict(), overrides))

    def weight(self, strategy: str) -> float:
        sc = self.strategies.get(strategy)
        return sc.weight if sc else 0.0

    def enabled(self, strategy: str) -> bool:
        sc = self.strategies.get(strategy)
        return bool(sc and sc.enabled)

    def route_for(self, n_history: int) -> str:
        """The route of a user with ``n_history`` distinct positive items."""
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
        learned = self._route(route)
        if learned is not None:
            names = [s for s, w in learned.weights.items() if w > 0]
        else:
            names = self.cold_strategies if route == "cold" else self.warm_strategies
        return [s for s in names if self.enabled(s)]

    def route_weight(self, route: str | None, strategy: str) -> float:
        """A strategy's blend weight on ``route``: the route's own weight (learned routes)
        times the strategy's global weight."""
        learned = self._route(route)
        if learned is not None:
            return learned.weights.get(strategy, 0.0) * self.weight(strategy)
        return self.weight(strategy)

    def route_blend(self, route: str | None) -> str:
        learned = self._route(route)
        return learned.blend if learned is not None and learned.blend else self.blend

    def route_names(self) -> list[str]:
        return [r.name for r in self.routes] if self.routes else list(ROUTES)


# -- request / history / result -------------------------------------------------------------
@dataclass
class RecRequest:
    n: int = 10
    offset: int = 0
    category: str | None = None
    exclude: Sequence[str] = ()
    explain: bool = False
    deadline_s: float | None = None
    priority: str = "normal"


@dataclass
class UserHistory:
    """A user's events at request time, newest first (external item ids)."""

    user_id: str | None
    items: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    # Cached (idmap, item indices) pairs so evaluation does not re-map for every model.
    _mapped: list = field(default_factory=list, repr=False, compare=False)
    # Derived sets and masks, each asked for by several stages of one request: key -> (number
    # of events it was computed from, value). A history is not changed once built; the count
    # guards against one that is.
    _memo: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_items(cls, user_id: str | None, items: Sequence[str], type: str = "click"):
        """A history of ``items`` (newest first), all of one event type (guest sessions)."""
        n = len(items)
        return cls(user_id, [str(i) for i in items], [type] * n, [1.0] * n, [0] * n)

    def __len__(self) -> int:
        return len(self.items)

    def _memoised(self, key, compute):
        n = len(self.types)
        got = self._memo.get(key)
        if got is None or got[0] != n:
            got = self._memo[key] = (n, compute())
        return got[1]

    def positive_items(self) -> frozenset[str]:
        return self._memoised(
            "positive",
            lambda: frozenset(
                i for i, t in zip(self.items, self.types, strict=True) if t != "dislike"
            ),
        )

    @staticmethod
    def _excluded_types(config: ServingConfig) -> frozenset[str]:
        types = set(config.seen_types) if config.exclude_seen else set()
        types.add("dislike")
        return frozenset(types)

    def _type_mask(self, types: frozenset[str]) -> np.ndarray:
        """Which events are of one of ``types`` (read-only: shared by the callers)."""

        def compute() -> np.ndarray:
            mask = np.fromiter((t in types for t in self.types), dtype=bool, count=len(self.types))
            mask.flags.writeable = False
            return mask

        return self._memoised(("mask", types), compute)

    def excluded_items(self, config: ServingConfig) -> frozenset[str]:
        """Items never to recommend to this user: dislikes, and seen items per the config."""
        types = self._excluded_types(config)

        def compute() -> frozenset[str]:
            mask = self._type_mask(types)
            return frozenset(i for i, m in zip(self.items, mask.tolist(), strict=True) if m)

        return self._memoised(("excluded", types), compute)

    def excluded_idx(self, config: ServingConfig, idmap) -> np.ndarray:
        """``excluded_items`` as indices of ``idmap`` (-1 for items it does not know), from the
        history's cached mapping: every strategy of a request asks, so no string lookups."""
        return self.item_idx(idmap)[self._type_mask(self._excluded_types(config))]

    def item_idx(self, idmap) -> np.ndarray:
        # Models trained on the same catalogue hold equal but distinct IdMaps: map once.
        idmap = canonical_idmap(idmap)
        for m, idx in self._mapped:
            if m is idmap:
                return idx
        idx = idmap.indices(self.items)
        self._mapped.append((idmap, idx))
        return idx

    def as_history(self, idmap) -> History:
        n = len(self.items)
        return History(
            item_idx=self.item_idx(idmap),
            event_type=np.fromiter((EVENT_CODE[t] for t in self.types), np.int8, count=n),
            value=np.asarray(self.values, dtype=np.float32),
            ts=np.asarray(self.ts, dtype=np.int64),
        )


_canonical_lock = threading.Lock()
_canonical_of: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_canonical_by_print: dict[tuple[int, str], weakref.ref] = {}


def canonical_idmap(idmap):
    """One representative per distinct IdMap content (identity if the map is unhashable).

    Every strategy of a request maps the user's history to its model's item indices; models
    trained on the same data have equal maps, so the mapping (and the user batch built from
    it) is computed once per request instead of once per strategy.
    """
    try:
        got = _canonical_of.get(idmap)
    except TypeError:  # not weak-referenceable: no sharing
        return idmap
    if got is not None:
        return got
    ids = getattr(idmap, "ids", None)
    if ids is None:
        return idmap
    with _canonical_lock:
        got = _canonical_of.get(idmap)
        if got is not None:
            return got
        digest = hashlib.blake2b("\x00".join(str(x) for x in ids).encode(), digest_size=16)
        fp = (len(ids), digest.hexdigest())
        ref = _canonical_by_print.get(fp)
        canon = ref() if ref is not None else None
        if canon is None or not np.array_equal(np.asarray(canon.ids), np.asarray(ids)):
            canon = idmap
            _canonical_by_print[fp] = weakref.ref(idmap)
        _canonical_of[idmap] = canon
        return canon


@dataclass
class RecItem:
    item_id: str
    score: float
    sources: dict[str, float] = field(default_factory=dict)


@dataclass
class RecResult:
    items: list[RecItem]
    route: str
    degraded: bool = False
    model_versions: dict[str, str] = field(default_factory=dict)
    # Strategies with no loaded model (skipped) and those dropped by error/deadline.
    skipped: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    # The serving profile whose routes and weights produced the answer (None: none active).
    profile: str | None = None

    def to_dict(self, explain: bool = False) -> dict[str, Any]:
        items = []
        for it in self.items:
            d: dict[str, Any] = {"item_id": it.item_id, "score": round(float(it.score), 6)}
            if explain:
                d["sources"] = {k: round(float(v), 6) for k, v in it.sources.items()}
            items.append(d)
        out = {
            "route": self.route,
            "items": items,
            "degraded": self.degraded,
            "model_versions": dict(self.model_versions),
        }
        if explain:
            out["profile"] = self.profile
        return out


class CatalogView(Protocol):
    """What the request path needs from the catalogue (``recsys.serving.catalog.Catalog``
    implements it)."""

    version: int

    def allowed(self, idmap, category: str | None) -> np.ndarray | None: ...
    def is_available(self, item_id: str) -> bool: ...
    def in_category(self, item_id: str, category: str) -> bool: ...
    def primary_category(self, item_id: str) -> str | None: ...


# -- the recommender ------------------------------------------------------------------------
class Recommender:
    """The request path. Cheap to build: one per request (config snapshot) is fine."""

    def __init__(
        self,
        models: Callable[[str], Any],
        config: ServingConfig | None = None,
        catalog: CatalogView | None = None,
        runner: Runner | None = None,
        event_weights: dict[str, float] | None = None,
        on_stage: Callable[[str, float], None] | None = None,
    ):
        self.models = models
        self.config = config or ServingConfig.default()
        self.catalog = catalog
        self.runner = runner or run_inline
        self.event_weights = event_weights or DEFAULT_WEIGHTS
        # Told each stage's time (route, candidates, blend, rules) of every recommend_batch.
        self.on_stage = on_stage

    # -- stage: route -----------------------------------------------------------------------
    def route(self, history: UserHistory) -> str:
        """The user's route: a learned route of the config (``ServingConfig.routes``), else
        "cold" below ``cold_threshold`` distinct positive items and "warm" from there."""
        return self.config.route_for(len(history.positive_items()))

    def strategies_for(self, route: str, history: UserHistory) -> list[str]:
        names = self.config.route_strategies(route)
        if not history.positive_items():
            # Nothing to be similar to: a strategy that cannot score an empty history (it
            # declares so, ``Strategy.scores_empty_history``) is never asked to.
            names = [s for s in names if _scores_empty_history(s)]
        return names

    # -- stage: candidates ------------------------------------------------------------------
    def _loaded(self, name: str):
        try:
            return self.models(name)
        except Exception:  # a broken model source must not fail the request
            log.exception("model source failed for %s", name)
            return None

    def candidates(
        self,
        name: str,
        loaded,
        histories: Sequence[UserHistory],
        requests: Sequence[RecRequest],
        shared: dict | None = None,
    ) -> list[Candidates]:
        """Per user, the strategy's top candidates as (external item id, raw score), best first.

        One batched ``recommend`` call per distinct category among the requests. ``shared``
        (one dict per ``recommend_batch`` call) lets strategies with equal item maps reuse
        one user matrix; it is made read-only, so a strategy can never alter another's input.
        """
        items = loaded.items
        n_items = len(items)
        users_map = getattr(loaded, "users", None)
        out: list[Candidates] = [Candidates([], np.zeros(0)) for _ in histories]
        groups: dict[str | None, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(req.category, []).append(i)
        for category, rows in groups.items():
            hs = [histories[i] for i in rows]
            user_index = users_map.indices([h.user_id or "" for h in hs]) if users_map else None
            key = (id(canonical_idmap(items)), n_items, tuple(id(h) for h in hs))
            base = shared.get(key) if shared is not None else None
            if base is None:
                base = user_batch([h.as_history(items) for h in hs], n_items, self.event_weights)
                if shared is not None:
                    for arr in (base.matrix.data, base.matrix.indices, base.matrix.indptr):
                        arr.flags.writeable = False
                    shared[key] = base
            batch = type(base)(
                matrix=base.matrix,
                sequences=base.sequences,
                user_index=(
                    user_index if user_index is not None else np.full(len(hs), -1, np.int64)
                ),
            )
            exclude = []
            for i, h in zip(rows, hs, strict=True):
                idx = h.excluded_idx(self.config, items)
                if requests[i].exclude:
                    idx = np.concatenate([idx, items.indices(requests[i].exclude)])
                exclude.append(idx[idx >= 0])
            allowed = self.catalog.allowed(items, category) if self.catalog else None
            want = max(
                self.config.candidates_per_strategy,
                max(requests[i].n + requests[i].offset for i in rows),
            )
            ids, scores = loaded.model.recommend(
                batch, n=min(want, n_items), exclude=exclude, candidates=allowed
            )
            ext = items.ids
            for r, i in enumerate(rows):
                keep = ids[r] >= 0
                names = np.asarray(ext[ids[r][keep]]).tolist()
                if names and type(names[0]) is not str:
                    names = [str(x) for x in names]
                out[i] = Candidates(
                    names,
                    scores[r][keep].astype(np.float64),
                    idx=ids[r][keep],
                    idmap=canonical_idmap(items),
                )
        return out

    # -- stage: blend -----------------------------------------------------------------------
    def blend(
        self, per_strategy: Mapping[str, list[tuple[str, float]]], route: str | None = None
    ) -> list[RecItem]:
        """Fuse one user's candidate lists into one ranked list with per-item sources."""
        fused = self._fuse(per_strategy, route)
        return [fused.item(r) for r in range(len(fused))]

    def _fuse(
        self, per_strategy: Mapping[str, list[tuple[str, float]]], route: str | None = None
    ) -> _Fused:
        """Weighted score fusion (or RRF) of the candidate lists, ranked by total contribution,
        ties broken by item id so results are deterministic across processes.

        Vectorised: the ~1,000 (item, score) pairs of a warm request become one array of item
        ids; ``np.unique`` numbers the distinct items in id order, ``np.bincount`` sums their
        contributions (in strategy order, as a running sum would) and one ``lexsort`` ranks
        them. Per-item sources are only materialised for the items a caller asks for.
        """
        names: list[str] = []
        lists: list[Candidates] = []
        contribs: list[np.ndarray] = []
        blend = self.config.route_blend(route)
        for name, cands in per_strategy.items():
            if not cands:
                continue
            cands = Candidates.of(cands)
            names.append(name)
            lists.append(cands)
            w = self.config.route_weight(route, name)
            contribs.append(self._contributions(cands, w, blend))
        if not lists:
            return _Fused.empty()
        idmap = lists[0].idmap
        if idmap is not None and all(c.idmap is idmap for c in lists):
            # One catalogue (the usual case): number the items by their index in it, and break
            # ties by each index's place in id order, precomputed per IdMap (same order as
            # the strings would give, without sorting strings per request).
            str_ids, id_rank = _id_order(idmap)
            uniq_idx, inverse = np.unique(
                np.concatenate([c.idx for c in lists]), return_inverse=True
            )
            tiebreak = id_rank[uniq_idx]
            uniq = None
        else:
            uniq, inverse = np.unique(
                np.array([i for c in lists for i in c.ids]), return_inverse=True
            )
            tiebreak = np.arange(len(uniq))
        n_uniq = len(tiebreak)
        flat = np.concatenate(contribs)
        totals = np.bincount(inverse, weights=flat, minlength=n_uniq)
        # The contribution of each strategy to each distinct item (NaN: not a candidate there).
        per = np.full((len(names), n_uniq), np.nan)
        start = 0
        for row, c in enumerate(contribs):
            per[row, inverse[start : start + len(c)]] = c
            start += len(c)
        order = np.lexsort((tiebreak, -totals))
        ranked = str_ids[uniq_idx[order]].tolist() if uniq is None else uniq[order].tolist()
        return _Fused(names, ranked, totals[order].tolist(), per[:, order])

    def _contributions(self, cands: Candidates, w: float, blend: str) -> np.ndarray:
        n = len(cands)
        if blend == "rrf":
            return w / (self.config.rrf_k + np.arange(1, n + 1, dtype=np.float64))
        if self.config.normalize == "rank":
            return w * (1.0 - np.arange(n, dtype=np.float64) / n)
        scores = cands.scores
        finite = np.isfinite(scores)
        if not finite.any():
            return np.zeros(n)
        lo, hi = scores[finite].min(), scores[finite].max()
        if hi - lo <= 1e-12:
            return np.full(n, float(w))
        out = w * (scores - lo) / (hi - lo)
        out[~finite] = 0.0
        return out

    # -- stage: business rules ------------------------------------------------------------
    def _rule_filter(self, history: UserHistory, request: RecRequest) -> Callable[[str], bool]:
        """The business rules as a predicate over item ids, called in rank order (the
        per-category cap counts the items it has let through)."""
        excluded = history.excluded_items(self.config) | {str(x) for x in request.exclude}
        cat = self.catalog
        cap = self.config.max_per_category
        category = request.category
        per_cat: dict[str | None, int] = {}

        def keep(item_id: str) -> bool:
            if item_id in excluded:
                return False
            if cat is not None:
                if not cat.is_available(item_id):
                    return False
                if category and not cat.in_category(item_id, category):
                    return False
            elif category:
                return False  # no catalogue: nothing is known to be in the category
            if cap is not None:
                pc = cat.primary_category(item_id) if cat is not None else None
                if pc is not None:
                    if per_cat.get(pc, 0) >= cap:
                        return False
                    per_cat[pc] = per_cat.get(pc, 0) + 1
            return True

        return keep

    # -- the whole path ---------------------------------------------------------------------
    def recommend(self, history: UserHistory, request: RecRequest | None = None) -> RecResult:
        return self.recommend_batch([history], [request or RecRequest()])[0]

    def recommend_batch(
        self, histories: Sequence[UserHistory], requests: Sequence[RecRequest] | None = None
    ) -> list[RecResult]:
        """Recommend for many users, batching each strategy's scoring across them."""
        if requests is None:
            requests = [RecRequest()] * len(histories)
        if len(requests) != len(histories):
            raise ValueError("histories and requests must have the same length")
        clock = time.perf_counter
        t0 = clock()
        routes = [self.route(h) for h in histories]
        wanted = [self.strategies_for(r, h) for r, h in zip(routes, histories, strict=True)]

        names = sorted({s for ws in wanted for s in ws} | {"popular"})
        loaded = {}
        for name in names:
            lm = self._loaded(name)
            if lm is not None:
                loaded[name] = lm
        skipped_all = [n for n in names if n not in loaded]

        # A user whose route has no loaded model falls back to popularity (degraded).
        fallback = [False] * len(histories)
        for i, ws in enumerate(wanted):
            if not any(s in loaded for s in ws):
                fallback[i] = True
                wanted[i] = ["popular"] if "popular" in loaded else []

        users_of: dict[str, list[int]] = {}
        for i, ws in enumerate(wanted):
            for s in ws:
                if s in loaded:
                    users_of.setdefault(s, []).append(i)

        shared: dict = {}

        def task(name: str, rows: list[int]):
            return lambda: self.candidates(
                name,
                loaded[name],
                [histories[i] for i in rows],
                [requests[i] for i in rows],
                shared,
            )

        tasks = {name: task(name, rows) for name, rows in users_of.items()}
        deadline = min((r.deadline_s for r in requests if r.deadline_s is not None), default=None)
        t1 = clock()
        results, missed = self._run(tasks, deadline)
        dropped = set(missed) | (set(tasks) - set(results))
        t2 = clock()

        out = []
        blend_s = rules_s = 0.0
        for i, (h, req) in enumerate(zip(histories, requests, strict=True)):
            per: dict[str, list[tuple[str, float]]] = {}
            for name in wanted[i]:
                if name in results:
                    per[name] = results[name][users_of[name].index(i)]
            # A fallback list is ranked on its own (route weights are for the route's models).
            ta = clock()
            fused = self._fuse(per, None if fallback[i] else routes[i])
            tb = clock()
            page = self._page_of(fused, h, req)
            blend_s += tb - ta
            rules_s += clock() - tb
            used = [s for s in wanted[i] if s in loaded]
            user_dropped = [s for s in used if s in dropped]
            out.append(
                RecResult(
                    items=page,
                    route=routes[i],
                    degraded=bool(user_dropped) or fallback[i] or not per,
                    model_versions={s: str(loaded[s].version) for s in used if s not in dropped},
                    skipped=[s for s in self.strategies_for(routes[i], h) if s in skipped_all],
                    dropped=user_dropped,
                    profile=self.config.profile,
                )
            )
        if self.on_stage is not None:
            self.on_stage("route", t1 - t0)
            self.on_stage("candidates", t2 - t1)
            self.on_stage("blend", blend_s)
            self.on_stage("rules", rules_s)
        return out

    def ranked_page(
        self,
        per: Mapping[str, list[tuple[str, float]]],
        history: UserHistory,
        request: RecRequest,
        route: str | None = None,
    ) -> list[RecItem]:
        """Stages blend, rules and page of one user's candidate lists (what
        ``recommend_batch`` does per user; the tuner ranks its trials through it)."""
        return self._page_of(self._fuse(per, route), history, request)

    def _page_of(self, fused: _Fused, history: UserHistory, request: RecRequest) -> list[RecItem]:
        """Stages rules and page: the page of ``fused`` that passes the business rules, without
        building an item object for every candidate, and without running the rules past the
        end of the page."""
        keep = self._rule_filter(history, request)
        lo, hi = request.offset, request.offset + request.n
        page: list[RecItem] = []
        passed = 0
        for rank, item in enumerate(fused.ids):
            if passed >= hi:
                break
            if not keep(item):
                continue
            if passed >= lo:
                page.append(fused.item(rank))
            passed += 1
        return page

    def _run(self, tasks, deadline):
        """Run strategy tasks; a task that raises is dropped (logged), never fails the call."""

        def guard(name, fn):
            def run():
                try:
                    return fn()
                except Exception:
                    log.exception("strategy %s failed; dropped from the blend", name)
                    return _FAILED

            return run

        results, missed = self.runner({n: guard(n, fn) for n, fn in tasks.items()}, deadline)
        results = {n: r for n, r in results.items() if r is not _FAILED}
        return results, list(missed)

    # -- other questions --------------------------------------------------------------------
    def popular(self, n: int = 10, category: str | None = None, offset: int = 0) -> RecResult:
        """Most popular available items (optionally in a category). Scores are relative
        popularity in 0..1: the model's score over the most popular candidate's (the raw
        scores are weighted event counts, whose scale means nothing to a client)."""
        req = RecRequest(n=n, offset=offset, category=category)
        lm = self._loaded("popular")
        if lm is None:
            return RecResult(items=[], route="popular", degraded=True, skipped=["popular"])
        empty = UserHistory(None)
        cands = self.candidates("popular", lm, [empty], [req])[0]
        top = max((float(s) for _, s in cands), default=0.0)
        scale = 1.0 / top if top > 0 else 1.0
        ranked = [RecItem(i, s * scale, {"popular": s * scale}) for i, s in cands]
        keep = self._rule_filter(empty, req)
        ranked = [it for it in ranked if keep(it.item_id)]
        return RecResult(
            items=ranked[req.offset : req.offset + req.n],
            route="popular",
            model_versions={"popular": str(lm.version)},
        )

    def similar_items(self, item_id: str, n: int = 10) -> RecResult:
        """Items similar to ``item_id``: blended over every enabled strategy that supports it.

        Falls back to popular items of the same category when no model knows the item (a
        brand-new item), and says ``degraded``.
        """
        per: dict[str, list[tuple[str, float]]] = {}
        versions: dict[str, str] = {}
        dropped: list[str] = []
        names = [s for s in self.config.warm_strategies if self.config.enabled(s)]
        names += [s for s in ("content",) if self.config.enabled(s) and s not in names]
        for name in names:
            lm = self._loaded(name)
            if lm is None or item_id not in lm.items:
                continue
            try:
                ids, scores = lm.model.similar_items(
                    np.array([lm.items.index(item_id)], dtype=np.int64),
                    n=min(self.config.candidates_per_strategy, len(lm.items)),
                )
            except NotImplementedError:
                continue
            except Exception:
                log.exception("similar_items failed in %s", name)
                dropped.append(name)
                continue
            keep = ids[0] >= 0
            per[name] = Candidates(
                [str(x) for x in lm.items.ids[ids[0][keep]]], scores[0][keep].astype(np.float64)
            )
            versions[name] = str(lm.version)
        req = RecRequest(n=n, exclude=[item_id])
        if not per:
            cat = self.catalog.primary_category(item_id) if self.catalog else None
            res = self.popular(n=n + 1, category=cat)
            items = [it for it in res.items if it.item_id != item_id][:n]
            return RecResult(
                items=items,
                route="similar",
                degraded=True,
                model_versions=res.model_versions,
                dropped=dropped,
            )
        return RecResult(
            items=self.ranked_page(per, UserHistory(None), req),
            route="similar",
            degraded=bool(dropped),
            model_versions=versions,
            dropped=dropped,
        )


_FAILED = object()


def _scores_empty_history(name: str) -> bool:
    """Whether strategy ``name`` declares it can score a user with no history (an unknown
    name, e.g. a test's own strategy, is assumed able: the request path stays as it was)."""
    from strategies import scores_empty_history

    return scores_empty_history(name)


_id_order_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _id_order(idmap) -> tuple[np.ndarray, np.ndarray]:
    """(ids as an object array of str, each index's rank in string order) for an IdMap,
    computed once per map."""
    got = _id_order_cache.get(idmap)
    if got is None:
        strs = [str(x) for x in idmap.ids]
        as_obj = np.array(strs, dtype=object)
        rank = np.empty(len(strs), dtype=np.int64)
        rank[np.argsort(np.array(strs, dtype=str), kind="stable")] = np.arange(len(strs))
        got = (as_obj, rank)
        _id_order_cache[idmap] = got
    return got


class Candidates(Sequence):
    """One strategy's candidates for one user, best first: a sequence of (item id, score)
    pairs, stored as the id list and a float64 score array so blending needs no per-pair
    Python work."""

    __slots__ = ("ids", "idmap", "idx", "scores")

    def __init__(
        self, ids: list[str], scores: np.ndarray, idx: np.ndarray | None = None, idmap=None
    ):
        if len(ids) != len(scores) or (idx is not None and len(idx) != len(ids)):
            raise ValueError("ids, scores (and idx) must have the same length")
        self.ids = ids
        self.scores = np.asarray(scores, dtype=np.float64)
        # Optional: the same items as indices of ``idmap`` (a canonical IdMap), so candidates
        # of strategies sharing a catalogue can be fused on integers.
        self.idx = idx if idmap is not None else None
        self.idmap = idmap if idx is not None else None

    @classmethod
    def of(cls, pairs: Sequence[tuple[str, float]]) -> Candidates:
        if isinstance(pairs, Candidates):
            return pairs
        return cls([p[0] for p in pairs], np.array([p[1] for p in pairs], dtype=np.float64))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return list(zip(self.ids[i], self.scores[i].tolist(), strict=True))
        return (self.ids[i], float(self.scores[i]))

    def __iter__(self):
        return iter(zip(self.ids, self.scores.tolist(), strict=True))

    def __eq__(self, other) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str):
            return list(self) == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"Candidates({list(self)!r})"


class _Fused:
    """Blended candidates in rank order: ``ids[r]``, ``totals[r]``, and the contribution of
    each strategy in ``names`` to rank ``r`` (``per[:, r]``, NaN where it did not propose it)."""

    __slots__ = ("ids", "names", "per", "totals")

    def __init__(self, names: list[str], ids: list[str], totals: list[float], per: np.ndarray):
        self.names, self.ids, self.totals, self.per = names, ids, totals, per

    @classmethod
    def empty(cls) -> _Fused:
        return cls([], [], [], np.zeros((0, 0)))

    def __len__(self) -> int:
        return len(self.ids)

    def item(self, rank: int) -> RecItem:
        col = self.per[:, rank].tolist()
        sources = {n: c for n, c in zip(self.names, col, strict=True) if c == c}  # not NaN
        return RecItem(self.ids[rank], self.totals[rank], sources)


def histories_from_data(data, users: Sequence[int] | None = None) -> list[UserHistory]:
    """UserHistory objects (newest first) for users of an InteractionData (evaluation helper).

    The item indices are pre-mapped for ``data.items``, so models trained on ``data`` (sharing
    its IdMap) do not re-map external ids.
    """
    # Newest first, ties in time newest-inserted first: the store's history read
    # (ORDER BY ts DESC, id DESC), so sequential models see the same order offline and online.
    order = np.lexsort((-np.arange(len(data)), -data.ts, data.user_idx))
    u = data.user_idx[order]
    bounds = np.searchsorted(u, np.arange(data.n_users + 1))
    ext = data.items.ids
    type_names = np.asarray(EVENT_TYPES, dtype=object)
    out = []
    for ui in range(data.n_users) if users is None else users:
        sl = order[bounds[ui] : bounds[ui + 1]]
        idx = data.item_idx[sl].astype(np.int64)
        h = UserHistory(
            user_id=str(data.users.ids[ui]),
            items=[str(x) for x in ext[idx]],
            types=type_names[data.event_type[sl]].tolist(),
            values=data.value[sl].astype(float).tolist(),
            ts=data.ts[sl].astype(int).tolist(),
        )
        h._mapped.append((data.items, idx))
        out.append(h)
    return out
