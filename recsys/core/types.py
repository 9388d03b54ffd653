"""The values the recommender's stages pass along: the request, the user's history, one
strategy's candidates, the blended list and the result.

Pure data with cached derived views (a history maps its items to a model's indices once per
catalogue); no Flask, SQL or Redis.

Over the ~500-line mark through its numpy-style docstrings (about 230 lines are code): the
values documented field by field, as the stages and the serving layer read them.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import compress
from typing import Any, Protocol

import numpy as np

from features.interactions import EVENT_CODE, EVENT_TYPES, History
from recsys.core.config import ServingConfig

_DISLIKED = frozenset({"dislike"})


@dataclass
class RecRequest:
    """What one recommendation request asks for.

    Parameters
    ----------
    n : int
        Items wanted (page size).
    offset : int
        Items of the ranked list skipped before the page.
    category : str or None
        Only items in this category; ``None``: any.
    exclude : sequence of str
        External item ids never to return.
    explain : bool
        Add per-strategy sources and the profile to the answer.
    deadline_s : float or None
        Time budget in seconds for the strategies; ``None``: no deadline (the serving layer
        sets one from admission).
    priority : str
        ``"low"``, ``"normal"`` or ``"high"`` (``recsys.serving.admission``).
    """

    n: int = 10
    offset: int = 0
    category: str | None = None
    exclude: Sequence[str] = ()
    explain: bool = False
    deadline_s: float | None = None
    priority: str = "normal"


@dataclass
class UserHistory:
    """A user's events at request time, newest first (external item ids).

    Parameters
    ----------
    user_id : str or None
        External user id; ``None``: a guest.
    items : list of str
        External item id of each event.
    types : list of str
        Event type name (one of ``EVENT_TYPES``) of each event.
    values : list of float
        Event values.
    ts : list of int
        Event times in unix seconds.
    """

    user_id: str | None
    items: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    # The newest event's time in microseconds, when the reader knows it (the SQL store's).
    newest_us: int | None = field(default=None, repr=False, compare=False)
    # Cached (idmap, item indices) pairs so evaluation does not re-map for every model.
    _mapped: list = field(default_factory=list, repr=False, compare=False)
    # Derived sets and masks, each asked for by several stages of one request: key -> (number
    # of events it was computed from, value). A history is not changed once built; the count
    # guards against one that is.
    _memo: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_items(cls, user_id: str | None, items: Sequence[str], type: str = "click"):
        """A history of ``items`` (newest first), all of one event type (guest sessions).

        Parameters
        ----------
        user_id : str or None
            External user id; ``None``: a guest.
        items : sequence of str
            External item ids, newest first.
        type : str
            Event type name of every event.

        Returns
        -------
        UserHistory
            Values 1.0, timestamps 0.
        """
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
        """Items of the history's non-dislike events (memoised).

        Returns
        -------
        frozenset of str
        """
        return self._memoised(
            "positive",
            lambda: frozenset(compress(self.items, (~self._type_mask(_DISLIKED)).tolist())),
        )

    def codes(self) -> np.ndarray:
        """The event type code (``EVENT_CODE``) of each event, computed once (read-only: the
        masks, the positive items and every model's input are derived from it).

        Returns
        -------
        np.ndarray of int8, shape (len(self),)

        Raises
        ------
        KeyError
            For an event type name not in ``EVENT_TYPES``.
        """

        def compute() -> np.ndarray:
            n = len(self.types)
            out = np.fromiter(map(EVENT_CODE.__getitem__, self.types), np.int8, count=n)
            out.flags.writeable = False
            return out

        return self._memoised("codes", compute)

    @staticmethod
    def _excluded_types(config: ServingConfig) -> frozenset[str]:
        types = set(config.seen_types) if config.exclude_seen else set()
        types.add("dislike")
        return frozenset(types)

    def _type_mask(self, types: frozenset[str]) -> np.ndarray:
        """Which events are of one of ``types`` (read-only: shared by the callers)."""

        def compute() -> np.ndarray:
            try:
                codes = self.codes()
            except KeyError:  # a type outside EVENT_TYPES: compare the names
                mask = np.fromiter((t in types for t in self.types), bool, len(self.types))
            else:
                mask = np.isin(codes, [EVENT_CODE[t] for t in types if t in EVENT_CODE])
            mask.flags.writeable = False
            return mask

        return self._memoised(("mask", types), compute)

    def excluded_items(self, config: ServingConfig) -> frozenset[str]:
        """Items never to recommend to this user: dislikes, and seen items per the config.

        Parameters
        ----------
        config : ServingConfig
            Its ``exclude_seen`` and ``seen_types`` decide which event types count as seen.

        Returns
        -------
        frozenset of str
        """
        types = self._excluded_types(config)

        def compute() -> frozenset[str]:
            mask = self._type_mask(types)
            return frozenset(compress(self.items, mask.tolist()))

        return self._memoised(("excluded", types), compute)

    def excluded_idx(self, config: ServingConfig, idmap) -> np.ndarray:
        """``excluded_items`` as indices of ``idmap`` (-1 for items it does not know), from the
        history's cached mapping: every strategy of a request asks, so no string lookups.

        Parameters
        ----------
        config : ServingConfig
            As for ``excluded_items``.
        idmap : IdMap
            A model's item map.

        Returns
        -------
        np.ndarray of int64, shape (n_excluded_events,)
            One entry per excluded event (repeats possible).
        """
        return self.item_idx(idmap)[self._type_mask(self._excluded_types(config))]

    def item_idx(self, idmap) -> np.ndarray:
        """The history's items as indices of ``idmap``, mapped once per distinct map content.

        Parameters
        ----------
        idmap : IdMap
            A model's item map (equal maps share one mapping, see ``canonical_idmap``).

        Returns
        -------
        np.ndarray of int64, shape (len(self),)
            -1 for items the map does not know. Shared: do not modify.
        """
        # Models trained on the same catalogue hold equal but distinct IdMaps: map once.
        idmap = canonical_idmap(idmap)
        for m, idx in self._mapped:
            if m is idmap:
                return idx
        idx = idmap.indices(self.items)
        self._mapped.append((idmap, idx))
        return idx

    def as_history(self, idmap) -> History:
        """The history as ``features.interactions.History`` for one model.

        Parameters
        ----------
        idmap : IdMap
            The model's item map.

        Returns
        -------
        History
            Newest first, items as indices of ``idmap`` (-1: unknown).

        Raises
        ------
        KeyError
            For an event type name not in ``EVENT_TYPES``.
        """
        return History(
            item_idx=self.item_idx(idmap),
            event_type=self.codes(),
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

    Parameters
    ----------
    idmap : IdMap
        Any item map (an object without ``ids`` is returned as is).

    Returns
    -------
    IdMap
        The first live map seen with the same ids, else ``idmap`` itself.
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
    """One recommended item.

    Parameters
    ----------
    item_id : str
        External item id.
    score : float
        Blended score (higher is better; scale depends on the blend method).
    sources : dict of str to float
        Each contributing strategy's part of the score.
    features : dict of str to float, optional
        With a learned ranker and ``explain``: its largest per-feature contributions to the
        score (``recsys.core.ranker.Ranker.explain``); None: not asked or not ranked.
    """

    item_id: str
    score: float
    sources: dict[str, float] = field(default_factory=dict)
    features: dict[str, float] | None = None


@dataclass
class RecResult:
    """The answer to one recommendation request.

    Parameters
    ----------
    items : list of RecItem
        The page, best first.
    route : str
        The route the user took.
    degraded : bool
        True when a strategy was dropped (error, deadline), the list fell back to
        popularity, or nothing could serve.
    model_versions : dict of str to str
        Strategy name -> version of the model that answered.
    skipped : list of str
        Strategies with no loaded model.
    dropped : list of str
        Strategies dropped by error or deadline.
    profile : str or None
        The serving profile whose routes and weights produced the answer; ``None``: none active.
    """

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
        """The JSON body of the answer.

        Parameters
        ----------
        explain : bool
            Add each item's ``sources`` and the ``profile``.

        Returns
        -------
        dict of str to Any
            ``route``, ``items`` (``item_id``, ``score`` rounded to 6 digits), ``degraded``,
            ``model_versions``.
        """
        items = []
        for it in self.items:
            d: dict[str, Any] = {"item_id": it.item_id, "score": round(float(it.score), 6)}
            if explain:
                d["sources"] = {k: round(float(v), 6) for k, v in it.sources.items()}
                if it.features is not None:
                    d["features"] = it.features
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
    implements it).

    Attributes
    ----------
    version : int
        Changes whenever the catalogue does.
    """

    version: int

    def allowed(self, idmap, category: str | None) -> np.ndarray | None:
        """Indices of ``idmap`` that may be recommended (available, in ``category``).

        Parameters
        ----------
        idmap : IdMap
            The model's item map.
        category : str or None
            Only items in this category; ``None``: any category.

        Returns
        -------
        np.ndarray of int64 or None
            Allowed item indices of ``idmap``; ``None``: no restriction (strategies skip
            the masking work).
        """
        ...

    def is_available(self, item_id: str) -> bool:
        """Whether an item may be recommended.

        Parameters
        ----------
        item_id : str
            External item id.

        Returns
        -------
        bool
            True for an item the catalogue does not know.
        """
        ...

    def in_category(self, item_id: str, category: str) -> bool:
        """Whether an item is in a category (names compared case-insensitively).

        Parameters
        ----------
        item_id : str
            External item id.
        category : str
            Category name.

        Returns
        -------
        bool
        """
        ...

    def primary_category(self, item_id: str) -> str | None:
        """An item's first category (used by the per-category diversity cap).

        Parameters
        ----------
        item_id : str
            External item id.

        Returns
        -------
        str or None
            ``None``: the item has no category (or is unknown).
        """
        ...


# -- the recommender ------------------------------------------------------------------------


_id_order_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def id_order(idmap) -> tuple[np.ndarray, np.ndarray]:
    """The ids of an IdMap as strings and their string-order ranks, computed once per map.

    Parameters
    ----------
    idmap : IdMap
        An item map (weak-referenceable: the result is cached per map).

    Returns
    -------
    ids : np.ndarray of object (str), shape (n,)
        The ids in index order.
    rank : np.ndarray of int64, shape (n,)
        Each index's rank in string order of the ids.
    """
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
    Python work.

    Parameters
    ----------
    ids : list of str
        External item ids.
    scores : np.ndarray of float, shape (len(ids),)
        Their scores (stored as float64).
    idx : np.ndarray of int, shape (len(ids),), optional
        The same items as indices of ``idmap``; kept only with ``idmap``.
    idmap : IdMap, optional
        A canonical item map for ``idx``; kept only with ``idx``.

    Raises
    ------
    ValueError
        If ``ids``, ``scores`` (and ``idx``) differ in length.
    """

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
        """Candidates from (item id, score) pairs.

        Parameters
        ----------
        pairs : sequence of (str, float)
            Best first; a ``Candidates`` is returned as is.

        Returns
        -------
        Candidates
        """
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


class Fused:
    """Blended candidates in rank order: ``ids[r]``, ``totals[r]``, and the contribution of
    each strategy in ``names`` to rank ``r`` (``per[:, r]``, NaN where it did not propose it).

    Parameters
    ----------
    names : list of str
        Strategy names (rows of ``per``).
    ids : list of str
        External item ids, best first.
    totals : list of float
        Blended score per rank.
    per : np.ndarray of float, shape (len(names), len(ids))
        Per-strategy contributions, NaN where absent.
    """

    __slots__ = ("ids", "names", "per", "totals")

    def __init__(self, names: list[str], ids: list[str], totals: list[float], per: np.ndarray):
        self.names, self.ids, self.totals, self.per = names, ids, totals, per

    @classmethod
    def empty(cls) -> Fused:
        """No candidates.

        Returns
        -------
        Fused
        """
        return cls([], [], [], np.zeros((0, 0)))

    def __len__(self) -> int:
        return len(self.ids)

    def item(self, rank: int) -> RecItem:
        """The item at one rank, with its per-strategy sources.

        Parameters
        ----------
        rank : int
            Position in ``ids``.

        Returns
        -------
        RecItem
            ``sources`` holds the strategies that proposed the item (NaN entries left out).
        """
        col = self.per[:, rank].tolist()
        sources = {n: c for n, c in zip(self.names, col, strict=True) if c == c}  # not NaN
        return RecItem(self.ids[rank], self.totals[rank], sources)


def histories_from_data(data, users: Sequence[int] | None = None) -> list[UserHistory]:
    """UserHistory objects (newest first) for users of an InteractionData (evaluation helper).

    The item indices are pre-mapped for ``data.items``, so models trained on ``data`` (sharing
    its IdMap) do not re-map external ids.

    Parameters
    ----------
    data : InteractionData
        The events.
    users : sequence of int, optional
        User indices; ``None``: every user, in index order.

    Returns
    -------
    list of UserHistory
        One per user, ties in time newest-inserted first (as the store reads them).
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
