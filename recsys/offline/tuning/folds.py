"""The validation rows every choice of the search is measured on: slices cut from the data the
way the caller's test is cut (``time``: the newest events; ``leave-last-out``: each user's last
event; ``random-user``/``stratified-item``: a seeded random share), repeated on the older rest
for more folds, and ``Validation``, their rows with histories and relevant items."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from features.interactions import InteractionData
from recsys.offline.tuning.guard import Rows, user_means
from recsys.offline.tuning.options import MAX_FOLDS

# Validation rows scored per request-path batch.
BATCH = 256


def validation_split(
    data: InteractionData, mode: str, fraction: float = 0.2, seed: int = 42
) -> tuple[InteractionData, InteractionData]:
    """Cut the validation slice from ``data`` the way a test part is cut (see module doc).

    Parameters
    ----------
    data : InteractionData
        The data to cut (the caller's training part).
    mode : str
        Split name: ``time``, ``leave-last-out``, ``random-user`` or ``stratified-item``.
    fraction : float
        Validation share, in (0, 1) (``leave-last-out``: unused, one event per user).
    seed : int
        Random seed of the random splits.

    Returns
    -------
    tuple[InteractionData, InteractionData]
        ``(train, validation)``.
    """
    from recsys.offline.evaluation.splits import split_data

    if mode == "time":
        return split_data(data, "time", fraction=fraction)
    return split_data(data, mode, seed=seed, ratio=1.0 - fraction)


def validation_folds(
    data: InteractionData,
    mode: str,
    fraction: float = 0.2,
    seed: int = 42,
    folds: int | None = None,
    min_rows: int = 2000,
) -> list[tuple[InteractionData, InteractionData]]:
    """One or more ``(train, validation)`` cuts of ``data``, each made the way the test is cut.

    The first is ``validation_split``. A further fold cuts the same way again from the previous
    fold's training part (``time``: the next older slice; ``leave-last-out``: each user's
    second-to-last event, and so on), or with another seed for the random splits. One slice can
    be too small to tell strategies apart: the unit of every comparison is a validation user
    (a row), and leave-last-out has one target per user (943 on ml-100k, where two strategies'
    nDCG@10 differ by less than its noise), a time slice only the users active in it (228 on
    ml-100k). ``folds=None`` adds folds until the rows (users with a target, summed over the
    folds) reach ``min_rows``, at most ``MAX_FOLDS``.

    Parameters
    ----------
    data : InteractionData
        The data to cut (the caller's training part).
    mode : str
        Split name, as for ``validation_split``.
    fraction : float
        Validation share of each cut.
    seed : int
        Random seed of the first cut (further random folds use ``seed + i``).
    folds : int or None
        Number of folds; None: as many as ``min_rows`` needs, at most ``MAX_FOLDS``.
    min_rows : int
        Rows wanted when ``folds`` is None.

    Returns
    -------
    list[tuple[InteractionData, InteractionData]]
        ``(train, validation)`` per fold, newest first; fewer when a cut leaves an empty part.
    """
    out: list[tuple[InteractionData, InteractionData]] = []
    src = data
    limit = folds or MAX_FOLDS
    while len(out) < limit:
        if mode in ("time", "leave-last-out") or not out:
            train, val = validation_split(src, mode, fraction, seed)
        else:
            train, val = validation_split(data, mode, fraction, seed + len(out))
        if len(train) == 0 or len(val) == 0:
            break
        out.append((train, val))
        src = train
        if folds is None and sum(len(np.unique(v.user_idx)) for _, v in out) >= min_rows:
            break
    return out


class Validation:
    """Validation rows: one per (fold, user with a target), with the user's history in that
    fold's training part and the relevant items. Every row of a fold is scored with models
    fitted on that fold's training part; ``train`` is the first (newest) fold's.

    Parameters
    ----------
    folds : Sequence[tuple[InteractionData, InteractionData]]
        ``(train, validation)`` per fold, newest first (``validation_folds``); at least one.
    k : int
        Cut-off of the objective.
    metric : str
        Objective: a key of ``ranking_metrics`` (``ndcg``, ``recall``...).
    max_rows : int or None
        Rows kept at most, summed over the folds: past it each fold keeps a seeded random
        sample of its users (an equal share each); None: every row.
    seed : int
        Seed of that sample.
    """

    def __init__(
        self,
        folds: Sequence[tuple[InteractionData, InteractionData]],
        k: int,
        metric: str,
        max_rows: int | None = None,
        seed: int = 42,
    ):
        import scipy.sparse as sp

        from recsys.core.types import histories_from_data
        from recsys.offline.evaluation.splits import relevant_matrix

        self.trains = [t for t, _ in folds]
        self.train, self.k, self.metric = self.trains[0], k, metric
        users, fold_of, rels, self.histories = [], [], [], []
        rng = np.random.default_rng(seed)
        per_fold = -(-max_rows // len(folds)) if max_rows else None
        for f, (train, val) in enumerate(folds):
            rel = relevant_matrix(val, train.n_users, train.n_items)
            u = np.flatnonzero(np.diff(rel.indptr) > 0)
            if per_fold is not None and len(u) > per_fold:
                u = np.sort(rng.choice(u, per_fold, replace=False))
            users.append(u)
            fold_of.append(np.full(len(u), f, dtype=np.int64))
            rels.append(rel[u])
            self.histories.extend(histories_from_data(train, u))
        self.users = np.concatenate(users)
        self.fold_of = np.concatenate(fold_of)
        self.relevant = sp.vstack(rels, format="csr")
        self.hist_len = np.array([len(h.positive_items()) for h in self.histories], np.int64)
        # Rows of one user, for tests that pair per user (rows of one user are not independent).
        _, self.user_row = np.unique(self.users, return_inverse=True)

    def __len__(self) -> int:
        return len(self.users)

    @property
    def n_folds(self) -> int:
        return len(self.trains)

    def rows_of(self, fold: int) -> np.ndarray:
        """The rows of one fold.

        Parameters
        ----------
        fold : int
            Fold number (0 = the newest).

        Returns
        -------
        np.ndarray
            Row indices (int64), ascending.
        """
        return np.flatnonzero(self.fold_of == fold)

    def values(self, rec_ids: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Per-row objective values of ``rec_ids`` (of the validation rows ``rows``).

        Parameters
        ----------
        rec_ids : np.ndarray
            ``(len(rows), >= k)`` item indices recommended for those rows, -1 padded.
        rows : np.ndarray or None
            Row indices; None: every row.

        Returns
        -------
        np.ndarray
            ``(len(rows),)`` float64 objective values.
        """
        from recsys.offline.evaluation.metrics import ranking_metrics

        rel = self.relevant if rows is None else self.relevant[rows]
        return ranking_metrics(rec_ids, rel, self.k)[self.metric]

    def paired(
        self, a: np.ndarray, b: np.ndarray, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Two per-row value arrays as per-user means over the rows where both are defined:
        the units of a paired test (one user's rows in two folds are not independent).

        Parameters
        ----------
        a, b : np.ndarray
            Per-row values (of ``rows``), NaN where undefined.
        rows : np.ndarray or None
            The rows the arrays hold; None: every row.

        Returns
        -------
        tuple[np.ndarray, np.ndarray]
            Per-user means of ``a`` and ``b``, same users in the same order.
        """
        return user_means(a, b, self.guard_rows(rows).user)

    def guard_rows(self, rows: np.ndarray | None = None) -> Rows:
        """What the guard (``recsys.offline.tuning.guard``) needs to know of the validation
        rows ``rows`` (all if None): each row's user and fold.

        Parameters
        ----------
        rows : np.ndarray or None
            Row indices; None: every row.

        Returns
        -------
        Rows
            Those rows' users and folds.
        """
        full = Rows(self.user_row, self.fold_of, self.n_folds)
        return full if rows is None else full.take(rows)
