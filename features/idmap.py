"""External string ids <-> contiguous integer indices. Models only ever see indices."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import repeat

import numpy as np


class IdMap:
    """An immutable, ordered mapping of external ids to ``0..n-1``. Saved with every model.

    Parameters
    ----------
    ids : iterable of str
        External ids in index order; index i is the i-th id.

    Raises
    ------
    ValueError
        If the ids (as strings) are not unique.
    """

    def __init__(self, ids: Iterable[str]):
        self.ids = np.asarray(list(ids), dtype=object)
        self._index = {str(x): i for i, x in enumerate(self.ids)}
        if len(self._index) != len(self.ids):
            raise ValueError("IdMap ids must be unique")

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, external_id: object) -> bool:
        return str(external_id) in self._index

    def index(self, external_id: str, default: int = -1) -> int:
        """Index of one external id.

        Parameters
        ----------
        external_id : str
            The id (compared as ``str``).
        default : int
            Returned when the id is unknown.

        Returns
        -------
        int
            The index in ``0..n-1``, or ``default``.
        """
        return self._index.get(str(external_id), default)

    def indices(self, external_ids: Iterable[str], default: int = -1) -> np.ndarray:
        """Indices of many external ids.

        Parameters
        ----------
        external_ids : iterable of str
            The ids (compared as ``str``).
        default : int
            Index given to unknown ids.

        Returns
        -------
        np.ndarray of int64, shape (len(external_ids),)
            The index of each id, ``default`` where unknown.
        """
        ids = external_ids if isinstance(external_ids, (list, tuple)) else list(external_ids)
        # The lookups in C (map over dict.get); ids that are not strings are looked up again
        # as strings where that first pass did not find them.
        out = np.fromiter(map(self._index.get, ids, repeat(default)), np.int64, count=len(ids))
        for i in np.flatnonzero(out == default).tolist():
            if not isinstance(ids[i], str):
                out[i] = self._index.get(str(ids[i]), default)
        return out

    def external(self, indices: Iterable[int]) -> list[str]:
        """External ids of indices.

        Parameters
        ----------
        indices : iterable of int
            Indices in ``0..n-1``.

        Returns
        -------
        list of str
            The external id of each index, in order.
        """
        return [str(self.ids[i]) for i in indices]

    def to_array(self) -> np.ndarray:
        """A unicode array for ``np.savez`` (no object dtype, so no pickle on load).

        Returns
        -------
        np.ndarray of str, shape (n,)
            The ids in index order.
        """
        return np.asarray(self.ids, dtype=str)

    @classmethod
    def from_array(cls, arr: np.ndarray) -> IdMap:
        """Rebuild a map from ``to_array``'s output.

        Parameters
        ----------
        arr : np.ndarray of str, shape (n,)
            The ids in index order.

        Returns
        -------
        IdMap
        """
        return cls(arr.tolist())
