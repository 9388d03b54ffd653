"""The learned second stage: a gradient-boosted ranker over the blended candidates.

The candidates of every generator (the strategies the ranker was trained with, each one's top
``per_generator``; with ``repeats``, the user's own past items too) make one pool per list.
Each pool item gets one row of features (``feature_names``):

* per generator: its raw score and its rank (NaN: that generator did not retrieve the item),
  and how many generators retrieved it;
* the blend: the item's blended score and rank (NaN: not in the blended list);
* the user: distinct items in the history, events, days since the newest event, days the
  history spans, the route's position;
* the item (``ItemStats``, counted as of the data's cut, never after it): events in three
  windows (a 64th, an 8th and half of the data's time span, so they scale with the shop) and in
  all, distinct users, the short window's trend against the middle one, days since its first
  and its last event;
* the pair: the user's share of history in the item's primary category, the item's price
  against the median price of the user's items (log ratio), and repeat features (the user's
  events with the item and days since the last one).

``Ranker.rerank`` scores the pool with a LightGBM booster (``lambdarank``; its own text model
format, no pickle) and puts it first, in score order; the rest of the blended list follows in
blend order (deep pages and the business rules still have items to walk). ``Ranker.explain``
gives each feature's contribution for the items of a page (LightGBM ``pred_contrib``).

Everything here is pure computation over arrays; training is ``recsys.offline.tuning.ranking``
and storage ``recsys.models.ranker_store``.
"""

from __future__ import annotations

import json
import math
import os
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from features.idmap import IdMap
from recsys.core.types import Candidates, Fused, UserHistory, canonical_idmap

RANKER_KIND = "ranker"
RANKER_FORMAT = 1
MODEL_FILE = "ranker.txt"
STATS_FILE = "stats.npz"
SPEC_FILE = "ranker.json"
DAY = 86400.0
# The item windows, as fractions of the data's time span.
WINDOWS = (1 / 64, 1 / 8, 1 / 2)
USER_FEATURES = ("hist_items", "hist_events", "user_idle_days", "user_span_days", "route")
ITEM_FEATURES = (
    "pop_short",
    "pop_mid",
    "pop_long",
    "pop_all",
    "item_users",
    "trend",
    "item_age_days",
    "item_idle_days",
)
PAIR_FEATURES = ("cat_affinity", "price_rel", "seen_count", "seen_days_ago")
BLEND_FEATURES = ("blend_score", "blend_rank", "n_generators")


def segment(route: str, history: UserHistory) -> str:
    """The segment of a list for ``Ranker.routes``: its route, ``/new`` added for an empty
    history (new shoppers are told apart: few of them, and nothing of their own to rank by).

    Parameters
    ----------
    route : str
        The route's name.
    history : UserHistory
        The user's history.

    Returns
    -------
    str
    """
    return route if history.positive_items() else f"{route}/new"


def feature_names(generators: Sequence[str]) -> list[str]:
    """The ranker's feature columns, in order.

    Parameters
    ----------
    generators : sequence of str
        The candidate generators (strategy names), in the ranker's order.

    Returns
    -------
    list of str
        ``score:<g>``, ``rank:<g>`` per generator, then the blend, user, item and pair columns.
    """
    out = [f"{kind}:{g}" for g in generators for kind in ("score", "rank")]
    return [*out, *BLEND_FEATURES, *USER_FEATURES, *ITEM_FEATURES, *PAIR_FEATURES]


@dataclass
class ItemStats:
    """Per-item counts as of ``as_of`` (unix seconds): row ``i`` describes ``items.ids[i]``.

    Parameters
    ----------
    items : IdMap
        The items.
    as_of : int
        The cut: no event after it is counted.
    span_s : float
        The data's time span in seconds (the windows are fractions of it).
    pop : np.ndarray of float32, shape (4, n_items)
        Events in the short, middle and long windows and in all.
    users : np.ndarray of float32, shape (n_items,)
        Distinct users.
    first_ts, last_ts : np.ndarray of float64, shape (n_items,)
        First and last event time (NaN: none).
    category : np.ndarray of int32, shape (n_items,)
        Primary category code (-1: none).
    price : np.ndarray of float64, shape (n_items,)
        Price (NaN: unknown).
    """

    items: IdMap
    as_of: int
    span_s: float
    pop: np.ndarray
    users: np.ndarray
    first_ts: np.ndarray
    last_ts: np.ndarray
    category: np.ndarray
    price: np.ndarray

    @classmethod
    def of(cls, data, as_of: int | None = None) -> ItemStats:
        """Count ``data``'s positive events at or before ``as_of``.

        Parameters
        ----------
        data : InteractionData
            The events (its ``items`` map is kept: rows are its item indices).
        as_of : int or None
            The cut; None: the newest event.

        Returns
        -------
        ItemStats
        """
        from features.interactions import DISLIKE

        n = data.n_items
        keep = data.event_type != DISLIKE
        if as_of is not None:
            keep &= data.ts <= as_of
        ts = data.ts[keep].astype(np.float64)
        item = data.item_idx[keep].astype(np.int64)
        user = data.user_idx[keep].astype(np.int64)
        cut = float(ts.max()) if as_of is None and len(ts) else float(as_of or 0)
        span = max(float(cut - ts.min()) if len(ts) else 0.0, DAY)
        pop = np.zeros((len(WINDOWS) + 1, n), dtype=np.float32)
        for w, frac in enumerate(WINDOWS):
            pop[w] = np.bincount(item[ts > cut - frac * span], minlength=n)
        pop[-1] = np.bincount(item, minlength=n)
        pairs = np.unique(item * max(data.n_users, 1) + user)
        users = np.bincount(pairs // max(data.n_users, 1), minlength=n).astype(np.float32)
        first = np.full(n, np.inf)
        np.minimum.at(first, item, ts)
        last = np.full(n, -np.inf)
        np.maximum.at(last, item, ts)
        first[~np.isfinite(first)] = np.nan
        last[~np.isfinite(last)] = np.nan
        category = np.full(n, -1, dtype=np.int32)
        price = np.full(n, np.nan)
        meta = data.item_meta
        if meta is not None:
            codes: dict[str, int] = {}
            for i, cats in enumerate(meta.categories):
                if cats:
                    category[i] = codes.setdefault(str(cats[0]).lower(), len(codes))
            if meta.price is not None:
                price = np.asarray(meta.price, dtype=np.float64)
        return cls(data.items, int(cut), span, pop, users, first, last, category, price)

    def save(self, path: str) -> None:
        """Write the counts to ``path`` (``np.savez``, no pickle).

        Parameters
        ----------
        path : str
            The ``.npz`` file.
        """
        np.savez(
            path,
            ids=np.asarray([str(x) for x in self.items.ids], dtype=str),
            as_of=np.int64(self.as_of),
            span_s=np.float64(self.span_s),
            pop=self.pop,
            users=self.users,
            first_ts=self.first_ts,
            last_ts=self.last_ts,
            category=self.category,
            price=self.price,
        )

    @classmethod
    def load(cls, path: str) -> ItemStats:
        """Read what ``save`` wrote.

        Parameters
        ----------
        path : str
            The ``.npz`` file.

        Returns
        -------
        ItemStats
        """
        with np.load(path, allow_pickle=False) as z:
            return cls(
                IdMap(z["ids"].tolist()),
                int(z["as_of"]),
                float(z["span_s"]),
                z["pop"],
                z["users"],
                z["first_ts"],
                z["last_ts"],
                z["category"],
                z["price"],
            )

    # -- mapping candidate indices to rows ----------------------------------------------------
    def rows_for(self, idmap) -> np.ndarray:
        """For each index of ``idmap``, the row of the same item here (-1: unknown), cached
        per map.

        Parameters
        ----------
        idmap : IdMap
            A model's (canonical) item map.

        Returns
        -------
        np.ndarray of int64
        """
        cache = self.__dict__.setdefault("_rows", weakref.WeakKeyDictionary())
        got = cache.get(idmap)
        if got is None:
            if canonical_idmap(idmap) is canonical_idmap(self.items):
                got = np.arange(len(self.items), dtype=np.int64)
            else:
                got = self.items.indices(idmap.ids)
            cache[idmap] = got
        return got

    def rows_of(self, cands: Candidates | Fused, n: int | None = None) -> np.ndarray:
        """The rows of the first ``n`` candidates (all: None), -1 for unknown items.

        Parameters
        ----------
        cands : Candidates or Fused
            Items best first (their indices are used when they carry them).
        n : int or None
            How many.

        Returns
        -------
        np.ndarray of int64
        """
        idx = getattr(cands, "idx", None)
        idmap = getattr(cands, "idmap", None)
        if idx is not None and idmap is not None:
            return self.rows_for(idmap)[np.asarray(idx[:n], dtype=np.int64)]
        return self.items.indices(cands.ids[:n])


class Ranker:
    """A trained second stage (see the module docstring).

    Parameters
    ----------
    booster : lightgbm.Booster
        The trained model.
    generators : sequence of str
        The strategies whose candidates make the pool, in feature order.
    stats : ItemStats
        The item counts features are computed from.
    per_generator : int
        Candidates taken from each generator (and from the blend) into the pool.
    repeats : bool
        Put the user's own past items into the pool (their rules let them through).
    info : dict, optional
        Validation figures, the guard's verdict, feature gains (stored with the model).
    routes : sequence of str, optional
        The segments whose lists it orders (``segment``: a route, ``<route>/new`` for its
        empty histories; where it was not behind the blend out of fold); None: all.
    """

    name = RANKER_KIND
    # What the model runtime asks of what it loads (``strategies.base.Strategy``).
    precisions: tuple[str, ...] = ()
    batched = False

    def __init__(
        self,
        booster,
        generators: Sequence[str],
        stats: ItemStats,
        per_generator: int = 100,
        repeats: bool = False,
        info: dict[str, Any] | None = None,
        routes: Sequence[str] | None = None,
    ):
        self.booster = booster
        self.generators = list(generators)
        self.stats = stats
        self.per_generator = int(per_generator)
        self.repeats = bool(repeats)
        self.info = dict(info or {})
        self.routes = None if routes is None else list(routes)
        self.features = feature_names(self.generators)
        self.version: str | None = None

    def with_stats(self, stats: ItemStats) -> Ranker:
        """The same model over other item counts (those of the data it will serve).

        Parameters
        ----------
        stats : ItemStats
            The counts.

        Returns
        -------
        Ranker
        """
        return Ranker(
            self.booster,
            self.generators,
            stats,
            self.per_generator,
            self.repeats,
            self.info,
            self.routes,
        )

    def serves(self, route: str, history: UserHistory | None = None) -> bool:
        """Whether it orders the list of ``history`` on ``route``.

        Parameters
        ----------
        route : str
            The route's name.
        history : UserHistory, optional
            The user's history; None: the route's non-empty histories.

        Returns
        -------
        bool
        """
        if self.routes is None:
            return True
        return (route if history is None else segment(route, history)) in self.routes

    def warm_up(self) -> None:
        """Score one row (the model runtime's warm-up: the booster's first call is slower)."""
        self.predict(np.zeros((1, len(self.features)), dtype=np.float32))

    # -- features ------------------------------------------------------------------------------
    def pool(
        self,
        per: Mapping[str, Candidates],
        fused: Fused,
        history: UserHistory,
        route: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The pool's item rows (of ``stats``) and their features.

        Parameters
        ----------
        per : mapping of str to Candidates
            Each strategy's candidates (those not in ``generators`` are ignored).
        fused : Fused
            The blended list.
        history : UserHistory
            The user's history, newest first.
        route : int
            The route's position among the configuration's routes.

        Returns
        -------
        rows : np.ndarray of int64, shape (n,)
            Distinct item rows, ascending.
        x : np.ndarray of float32, shape (n, len(features))
        """
        st, k = self.stats, self.per_generator
        lists = []
        for g in self.generators:
            c = per.get(g)
            if c is not None and len(c):
                r = st.rows_of(c, k)
                lists.append((r, np.asarray(c.scores[:k], dtype=np.float64)))
            else:
                lists.append(None)
        blend_rows = st.rows_of(fused) if len(fused) else np.zeros(0, np.int64)
        hist_rows, hist_ts = self._history_rows(history)
        parts = [r for r, _ in (x for x in lists if x is not None)] + [blend_rows[:k]]
        if self.repeats and len(hist_rows):
            parts.append(hist_rows)
        rows = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
        rows = rows[rows >= 0]
        n = len(rows)
        x = np.full((n, len(self.features)), np.nan, dtype=np.float32)
        if n == 0:
            return rows, x
        col = 0
        hits = np.zeros(n, dtype=np.float32)
        for entry in lists:
            if entry is not None:
                r, s = entry
                ok = r >= 0
                at = np.searchsorted(rows, r[ok])
                x[at, col] = s[ok]
                x[at, col + 1] = np.flatnonzero(ok)
                hits[at] += 1
            col += 2
        okb = blend_rows >= 0
        rank_b = np.flatnonzero(okb)
        inb = np.isin(blend_rows[okb], rows)
        at = np.searchsorted(rows, blend_rows[okb][inb])
        x[at, col] = np.asarray(fused.totals, dtype=np.float64)[rank_b[inb]]
        x[at, col + 1] = rank_b[inb]
        x[:, col + 2] = hits
        col += 3
        now = float(max(st.as_of, history.ts[0] if history.ts else st.as_of))
        n_items = len(history.positive_items())
        if len(hist_ts):
            idle, span = (now - hist_ts.max()) / DAY, (hist_ts.max() - hist_ts.min()) / DAY
        else:
            idle = span = np.nan
        x[:, col : col + 5] = (n_items, len(history), idle, span, route)
        col += 5
        pop = st.pop[:, rows]
        x[:, col : col + 4] = pop.T
        x[:, col + 4] = st.users[rows]
        short_rate = pop[0] / WINDOWS[0]
        mid_rate = pop[1] / WINDOWS[1]
        x[:, col + 5] = (short_rate + 1.0) / (mid_rate + 1.0)
        x[:, col + 6] = (now - st.first_ts[rows]) / DAY
        x[:, col + 7] = (now - st.last_ts[rows]) / DAY
        col += 8
        self._pair_features(x, col, rows, hist_rows, hist_ts, now)
        return rows, x

    def _history_rows(self, history: UserHistory) -> tuple[np.ndarray, np.ndarray]:
        """The rows and times of the history's positive events (unknown items left out)."""
        if not len(history):
            return np.zeros(0, np.int64), np.zeros(0)
        # Indices of an equal (canonical) map are this map's rows: the ids are the same.
        rows = history.item_idx(self.stats.items).astype(np.int64)
        ts = np.asarray(history.ts, dtype=np.float64)
        ok = (rows >= 0) & np.fromiter((t != "dislike" for t in history.types), bool, len(rows))
        return rows[ok], ts[ok]

    def _pair_features(self, x, col, rows, hist_rows, hist_ts, now) -> None:
        st = self.stats
        if len(hist_rows) == 0:
            x[:, col + 2] = 0.0
            return
        cats = st.category[hist_rows]
        cats = cats[cats >= 0]
        item_cat = st.category[rows]
        if len(cats):
            share = np.bincount(cats, minlength=int(st.category.max()) + 1) / len(cats)
            x[:, col] = np.where(item_cat >= 0, share[np.maximum(item_cat, 0)], np.nan)
        prices = st.price[hist_rows]
        prices = prices[np.isfinite(prices) & (prices > 0)]
        if len(prices):
            with np.errstate(divide="ignore", invalid="ignore"):
                x[:, col + 1] = np.log(st.price[rows] / np.median(prices))
        pos = np.searchsorted(rows, hist_rows)
        pos = np.minimum(pos, len(rows) - 1)
        hit = rows[pos] == hist_rows
        counts = np.bincount(pos[hit], minlength=len(rows)).astype(np.float32)
        x[:, col + 2] = counts
        last = np.full(len(rows), -np.inf)
        np.maximum.at(last, pos[hit], hist_ts[hit])
        with np.errstate(invalid="ignore"):
            x[:, col + 3] = np.where(np.isfinite(last), (now - last) / DAY, np.nan)

    # -- scoring -------------------------------------------------------------------------------
    def predict(self, x: np.ndarray) -> np.ndarray:
        """The booster's scores of feature rows (one thread: a request's pool is small).

        Parameters
        ----------
        x : np.ndarray of float32, shape (n, len(features))

        Returns
        -------
        np.ndarray of float64, shape (n,)
        """
        if not len(x):
            return np.zeros(0)
        return np.asarray(self.booster.predict(x, num_threads=1), dtype=np.float64)

    def rerank(
        self,
        per: Mapping[str, Candidates],
        fused: Fused,
        history: UserHistory,
        route: int = 0,
    ) -> Fused:
        """The pool in score order, then the rest of the blended list in blend order.

        Parameters
        ----------
        per, fused, history, route
            As for ``pool``.

        Returns
        -------
        Fused
            Totals are the ranker's scores (the blend's totals past the pool, shifted below);
            ``per`` keeps each strategy's blend contribution.
        """
        rows, x = self.pool(per, fused, history, route)
        if not len(rows):
            return fused
        return self.order(rows, x, self.predict(x), fused)

    def order(self, rows: np.ndarray, x: np.ndarray, scores: np.ndarray, fused: Fused) -> Fused:
        """The pool ``rows`` in ``scores`` order (ties: blend order), then the rest of
        ``fused`` in blend order.

        Parameters
        ----------
        rows, x : np.ndarray
            The pool and its features (``pool``).
        scores : np.ndarray of float, shape (len(rows),)
            The ranker's scores.
        fused : Fused
            The blended list.

        Returns
        -------
        Fused
            As for ``rerank``.
        """
        blend_rank = x[:, len(self.generators) * 2 + 1]
        order = np.lexsort((np.nan_to_num(blend_rank, nan=np.inf), -scores))
        ids = [str(s) for s in self.stats.items.ids[rows[order]]]
        pos = {item: r for r, item in enumerate(fused.ids)}
        in_pool = set(ids)
        rest = [r for r, item in enumerate(fused.ids) if item not in in_pool]
        floor = float(scores.min()) - 1.0
        totals = scores[order].tolist() + [floor - r / max(len(fused), 1) for r in range(len(rest))]
        cols = [pos.get(i, -1) for i in ids] + rest
        per_m = np.full((len(fused.names), len(cols)), np.nan)
        if len(fused.names) and len(cols):
            src = np.asarray(cols, dtype=np.int64)
            have = src >= 0
            per_m[:, have] = fused.per[:, src[have]]
        return Fused(list(fused.names), ids + [fused.ids[r] for r in rest], totals, per_m)

    def explain(
        self,
        per: Mapping[str, Candidates],
        fused: Fused,
        history: UserHistory,
        item_ids: Sequence[str],
        route: int = 0,
        top: int = 8,
    ) -> dict[str, dict[str, float]]:
        """Each page item's largest feature contributions to its score (LightGBM
        ``pred_contrib``: SHAP values; they and ``bias`` sum to the score).

        Parameters
        ----------
        per, fused, history, route
            As for ``pool``.
        item_ids : sequence of str
            The page's items.
        top : int
            Contributions kept per item (largest magnitude first), plus ``bias``.

        Returns
        -------
        dict of str to dict of str to float
            Item id -> feature -> contribution; items outside the pool are left out.
        """
        rows, x = self.pool(per, fused, history, route)
        want = self.stats.items.indices(item_ids)
        at = np.searchsorted(rows, want)
        ok = (want >= 0) & (at < len(rows))
        ok[ok] = rows[at[ok]] == want[ok]
        if not ok.any():
            return {}
        contrib = np.asarray(self.booster.predict(x[at[ok]], pred_contrib=True, num_threads=1))
        out: dict[str, dict[str, float]] = {}
        for item, c in zip(
            [i for i, o in zip(item_ids, ok, strict=True) if o], contrib, strict=True
        ):
            idx = np.argsort(-np.abs(c[:-1]))[:top]
            d = {self.features[j]: round(float(c[j]), 6) for j in idx}
            d["bias"] = round(float(c[-1]), 6)
            out[str(item)] = d
        return out

    def gains(self) -> dict[str, float]:
        """Each feature's share of the booster's total split gain, largest first.

        Returns
        -------
        dict of str to float
        """
        g = np.asarray(self.booster.feature_importance(importance_type="gain"), dtype=np.float64)
        total = g.sum() or 1.0
        order = np.argsort(-g)
        return {self.features[i]: round(float(g[i] / total), 4) for i in order if g[i] > 0}

    # -- persistence (the Strategy-like part the model repository calls) -----------------------
    def get_params(self) -> dict[str, Any]:
        """What the repository records as the version's params.

        Returns
        -------
        dict
        """
        return {
            "generators": self.generators,
            "per_generator": self.per_generator,
            "repeats": self.repeats,
            "routes": self.routes,
            "features": self.features,
        }

    def save(self, path: str) -> None:
        """Write the booster (LightGBM's text format), the item counts and the spec.

        Parameters
        ----------
        path : str
            The version's folder (created if missing).
        """
        os.makedirs(path, exist_ok=True)
        self.booster.save_model(os.path.join(path, MODEL_FILE))
        self.stats.save(os.path.join(path, STATS_FILE))
        spec = {"format": RANKER_FORMAT, **self.get_params(), "info": self.info}
        with open(os.path.join(path, SPEC_FILE), "w") as f:
            json.dump(spec, f, indent=1, sort_keys=True, default=_plain)
        with open(os.path.join(path, "params.json"), "w") as f:
            json.dump({"name": RANKER_KIND, "params": self.get_params()}, f)

    @classmethod
    def load(cls, path: str) -> Ranker:
        """Read what ``save`` wrote (verify the folder first: ``ranker_store.load_ranker``).

        Parameters
        ----------
        path : str
            The version's folder.

        Returns
        -------
        Ranker

        Raises
        ------
        ValueError
            Not a ranker of this format, or features that do not match the model.
        """
        import lightgbm as lgb

        with open(os.path.join(path, SPEC_FILE)) as f:
            spec = json.load(f)
        if not isinstance(spec, dict) or spec.get("format") != RANKER_FORMAT:
            raise ValueError(f"not a ranker of format {RANKER_FORMAT}")
        with open(os.path.join(path, MODEL_FILE)) as f:
            booster = lgb.Booster(model_str=f.read())
        out = cls(
            booster,
            spec["generators"],
            ItemStats.load(os.path.join(path, STATS_FILE)),
            spec["per_generator"],
            spec["repeats"],
            spec.get("info"),
            spec.get("routes"),
        )
        if booster.num_feature() != len(out.features) or spec.get("features") != out.features:
            raise ValueError("the model's features do not match its spec")
        return out


def _plain(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and math.isnan(x):
        return None
    return str(x)
