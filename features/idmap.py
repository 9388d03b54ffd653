"""External string ids <-> contiguous integer indices. Models only ever see indices."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


class IdMap:
    """An immutable, ordered mapping of external ids to ``0..n-1``. Saved with every model."""

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
        return self._index.get(str(external_id), default)

    def indices(self, external_ids: Iterable[str], default: int = -1) -> np.ndarray:
        get = self._index.get
        return np.fromiter((get(str(x), default) for x in external_ids), dtype=np.int64)

    def external(self, indices: Iterable[int]) -> list[str]:
        return [str(self.ids[i]) for i in indices]

    def to_array(self) -> np.ndarray:
        """A unicode array for ``np.savez`` (no object dtype, so no pickle on load)."""
        return np.asarray(self.ids, dtype=str)

    @classmethod
    def from_array(cls, arr: np.ndarray) -> IdMap:
        return cls(arr.tolist())
