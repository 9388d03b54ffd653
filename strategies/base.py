"""The one contract every strategy implements (modelled on implicit's and scikit-learn's).

* Models see internal integer indices only; ``features.idmap.IdMap`` maps external ids.
* Hyperparameters are ``__init__`` keyword arguments stored as-is; learned state ends in ``_``.
* Every query is batched: ``recommend`` takes a ``UserBatch`` of b users and returns
  ``(ids, scores)``, each of shape ``(b, n)``; rows with fewer than n results are padded with
  ``ids == -1`` and ``scores == -inf``. Scores are higher-is-better and only comparable within
  one strategy (the blender normalises them).
* Users are described by their *current* history (a weighted CSR row per user plus the ordered
  item sequence), so fresh events change results without retraining. ``user_index`` is the
  training-time index where known (-1 otherwise); strategies may use it as a shortcut only when
  the history has not changed since training.
* Persistence: ``save(dir)`` writes JSON (params) and ``.npz`` (arrays; loaded with
  ``allow_pickle=False``) or torch ``state_dict`` files (loaded with ``weights_only=True``).
  Never pickle. The model repository (recsys.models.repository) adds the manifest and checksums.
"""

from __future__ import annotations

import inspect
import json
import os
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Self

import numpy as np

from features.interactions import InteractionData, UserBatch

PARAMS_FILE = "params.json"

# Single-core throughputs behind ``estimate_cost``'s times (order of magnitude, calibrated on
# issue 29's 50k-item run: EASE's 20k-item inverse, ALS, BPR; docs/scale.md):
DENSE_FLOPS = 1.5e10  # LAPACK/BLAS float64 (numpy), one core
TORCH_FLOPS = 5e9  # torch float32 training steps (forward + backward + Adam)
SPARSE_OPS = 1e9  # sparse products, implicit's inner loops, numpy sorts (per element op)


class Strategy(ABC):
    """Base class. Subclasses set ``name`` and implement ``fit``, ``score`` and persistence.

    The methods are documented here once; a subclass documents only what it adds. Hyperparameters
    are the subclass's ``__init__`` keyword arguments, stored unchanged as attributes.
    """

    name: ClassVar[str] = "base"
    # Whether the strategy can serve users with no (or almost no) history.
    serves_cold: ClassVar[bool] = False
    # Whether ``score`` gives a meaningful ranking for a user with an empty history (a prior
    # such as popularity or an item bias). The router never sends an empty history to a
    # strategy that says False: its scores would be arbitrary (all zeros, say).
    scores_empty_history: ClassVar[bool] = False
    # Capabilities the serving runtime reads instead of checking names or attributes:
    # ``batched``: a ``score`` call costs about as much for one user as for many (a forward
    # pass), so concurrent requests are merged by a micro-batcher (``recsys.models.runtime``).
    batched: ClassVar[bool] = False
    # Devices ``fit``/``score`` can run on (``device`` parameter where more than the CPU).
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    # Precisions a fitted model can be served in on the CPU through ``quantized(precision)``
    # (the runtime derives the ``DEEP_CPU_PRECISION`` variant at load); empty: served as fitted.
    precisions: ClassVar[tuple[str, ...]] = ()
    # Trained (``recsys train``) and tuned only when named: no route uses it by default and
    # its CPU fit takes minutes, which ``make run`` would otherwise pay on every fresh machine.
    opt_in: ClassVar[bool] = False

    # -- training -------------------------------------------------------------------------
    @abstractmethod
    def fit(self, data: InteractionData) -> Self:
        """Learn from the training interactions.

        Parameters
        ----------
        data : InteractionData
            Training events; item indices follow ``data.items`` (``data.n_items`` items).

        Returns
        -------
        Self
            ``self``, fitted (learned attributes end in ``_``).
        """

    # -- querying ---------------------------------------------------------------------------
    @abstractmethod
    def score(self, users: UserBatch) -> np.ndarray:
        """Dense scores of every item for each user, higher is better (-inf: never recommend).

        Parameters
        ----------
        users : UserBatch
            b users described by their current histories.

        Returns
        -------
        np.ndarray of float32, shape (b, n_items)
            Only comparable within one strategy.
        """

    def recommend(
        self,
        users: UserBatch,
        n: int = 10,
        exclude: list[np.ndarray] | None = None,
        candidates: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-n item indices and scores per user.

        Parameters
        ----------
        users : UserBatch
            b users described by their current histories.
        n : int
            Results per user.
        exclude : list of np.ndarray of int, length b, optional
            Per-user arrays of item indices never to return (an entry may be None or empty).
        candidates : np.ndarray of int, optional
            If given, only these item indices may be returned (for all users).

        Returns
        -------
        ids : np.ndarray of int64, shape (b, n)
            Item indices, best first; -1 pads rows with fewer than n results.
        scores : np.ndarray of float32, shape (b, n)
            Their scores; -inf where ``ids == -1``.
        """
        scores = np.asarray(self.score(users), dtype=np.float32)
        if candidates is not None:
            mask = np.full(scores.shape[1], True)
            mask[np.asarray(candidates, dtype=np.int64)] = False
            scores[:, mask] = -np.inf
        if exclude is not None:
            for row, ex in enumerate(exclude):
                if ex is not None and len(ex):
                    scores[row, np.asarray(ex, dtype=np.int64)] = -np.inf
        return top_n(scores, n)

    def similar_items(self, items: np.ndarray, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-n most similar items per query item (the item itself excluded).

        Parameters
        ----------
        items : np.ndarray of int, shape (q,)
            Query item indices.
        n : int
            Results per query item.

        Returns
        -------
        ids : np.ndarray of int64, shape (q, n)
            Similar item indices, most similar first; -1 pads.
        scores : np.ndarray of float32, shape (q, n)
            Similarities; -inf where ``ids == -1``.

        Raises
        ------
        NotImplementedError
            In the base class: a strategy without item similarity.
        IndexError
            In subclasses, for a query index outside ``[0, n_items)``.
        """
        raise NotImplementedError(f"{self.name} does not support similar_items")

    # -- cost -------------------------------------------------------------------------------
    @classmethod
    def estimate_cost(
        cls, n_users: int, n_items: int, n_events: int, params: dict[str, Any] | None = None
    ) -> tuple[float, float | None]:
        """Estimated peak memory and time of one ``fit`` (docs/scale.md, "Cost per strategy").

        ``recsys train`` refuses a strategy whose memory estimate exceeds
        ``TRAIN_MEMORY_BUDGET_MB``. The default counts the training input only (the user-item
        matrix and its transpose) and no time; strategies whose cost is known override it.

        Parameters
        ----------
        n_users : int
            Users with events (U).
        n_items : int
            Catalogue size (I).
        n_events : int
            Training events (E; they bound the user-item matrix's non-zeros).
        params : dict of str to Any, optional
            Hyperparameters overriding the defaults (``__init__`` keywords).

        Returns
        -------
        bytes : float
            Estimated peak memory of the fit beyond the process's baseline.
        seconds : float or None
            Estimated single-core wall time; None where unknown.
        """
        return input_bytes(n_users, n_items, n_events), None

    @classmethod
    def _params_with(cls, params: dict[str, Any] | None) -> dict[str, Any]:
        """The ``__init__`` defaults updated with ``params`` (for ``estimate_cost``)."""
        defaults = {
            p.name: p.default
            for p in inspect.signature(cls.__init__).parameters.values()
            if p.name != "self" and p.default is not inspect.Parameter.empty
        }
        return {**defaults, **(params or {})}

    # -- persistence ------------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """Hyperparameters as given to ``__init__`` (JSON-serialisable).

        As in scikit-learn, every ``__init__`` keyword is stored unchanged as an attribute of
        the same name, so the parameters are read back from the signature, not kept twice.

        Returns
        -------
        dict of str to Any
            Keyword name -> current attribute value, tuples turned into lists.
        """
        names = [
            p.name
            for p in inspect.signature(type(self).__init__).parameters.values()
            if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        return {name: _jsonable(getattr(self, name)) for name in names}

    @abstractmethod
    def save(self, path: str) -> None:
        """Write the fitted model into directory ``path`` (created if needed). No pickle.

        Parameters
        ----------
        path : str
            Model directory; ``PARAMS_FILE`` and the strategy's arrays or weights go there.
        """

    @classmethod
    @abstractmethod
    def load(cls, path: str) -> Self:
        """Read a model written by ``save``.

        Parameters
        ----------
        path : str
            Model directory.

        Returns
        -------
        Self
            A fitted instance with the saved parameters.
        """

    # helpers for subclasses
    def _save_params(self, path: str, extra: dict[str, Any] | None = None) -> None:
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, PARAMS_FILE), "w") as f:
            json.dump({"name": self.name, "params": self.get_params(), **(extra or {})}, f)

    @staticmethod
    def _load_params(path: str) -> dict[str, Any]:
        with open(os.path.join(path, PARAMS_FILE)) as f:
            return json.load(f)


def input_bytes(n_users: int, n_items: int, n_events: int) -> float:
    """Bytes of the training input a fit holds: the user-item CSR and its transpose.

    Parameters
    ----------
    n_users : int
        Users (U).
    n_items : int
        Items (I).
    n_events : int
        Events (E; they bound the matrix's non-zeros).

    Returns
    -------
    float
        ``2 * (12 E + 8 (U + I))``: a float32 value and an int64 index per cell, twice.
    """
    return float(2 * (12 * n_events + 8 * (n_users + n_items)))


def _jsonable(value: Any) -> Any:
    """Tuples become lists, as JSON would make them, so saved and live params compare equal."""
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def top_n(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-n of a dense score matrix, padded with (-1, -inf) where fewer are finite.

    ``torch.topk`` (a heap selection in C++, on the caller's memory): faster than
    ``np.argpartition`` plus an ``argsort`` of the part (docs/design-notes.md), and every
    strategy of every request ranks once. NaN scores rank
    as -inf (never returned), as they did with numpy's selection. Ties among equal scores come
    in an order of torch's choosing (numpy's was of its own choosing too); the blend breaks
    ties by item id.

    Parameters
    ----------
    scores : np.ndarray, shape (b, m)
        Scores, higher is better; float32/float64 used as is, other dtypes cast to float32. Not
        modified.
    n : int
        Results per row (may exceed m).

    Returns
    -------
    ids : np.ndarray of int64, shape (b, n)
        Column indices, best first; -1 where the score is not finite or past m.
    scores : np.ndarray of float32, shape (b, n)
        Their scores; -inf where ``ids == -1``.
    """
    import torch

    b, m = scores.shape
    k = min(n, m)
    if k <= 0:
        return np.full((b, n), -1, dtype=np.int64), np.full((b, n), -np.inf, dtype=np.float32)
    s = scores if scores.dtype in (np.float32, np.float64) else scores.astype(np.float32)
    nan = np.isnan(s)
    if nan.any():
        s = np.where(nan, -np.inf, s)
    if not s.flags.writeable:
        s = s.copy()  # torch.from_numpy wants memory it may (but here never does) write
    values, index = torch.topk(torch.from_numpy(s), k, dim=1, largest=True, sorted=True)
    ids = index.numpy()
    sc = values.numpy().astype(np.float32, copy=False)
    bad = ~np.isfinite(sc)
    if bad.any():
        ids[bad] = -1
        sc[bad] = -np.inf
    if k < n:
        ids = np.pad(ids, ((0, 0), (0, n - k)), constant_values=-1)
        sc = np.pad(sc, ((0, 0), (0, n - k)), constant_values=-np.inf)
    return ids, sc
