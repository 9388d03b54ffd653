"""The serving adapter of a batched strategy (``Strategy.batched``): ``score`` through a
``recsys.models.batcher.MicroBatcher``, so concurrent one-user calls share a forward pass.

``ModelRuntime`` (``recsys.models.runtime``) wraps every loaded model whose strategy declares the
capability; the strategy contract test runs every strategy through this adapter too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys.models.batcher import BatcherClosed, MicroBatcher
from recsys.ops import metrics
from strategies.base import Strategy, UserBatch

log = logging.getLogger(__name__)


def stack_csr(mats: list) -> sp.csr_matrix:
    """``sp.vstack(mats, format="csr")`` for CSR matrices of equal width, by concatenating
    their arrays (cheaper than ``sp.vstack`` for small batches: docs/design-notes.md).

    Parameters
    ----------
    mats : list of scipy.sparse matrix
        At least one matrix; any that is not a ``csr_matrix`` of the first one's width makes
        this fall back to ``sp.vstack``.

    Returns
    -------
    scipy.sparse.csr_matrix
        Shape ``(sum of the row counts, width)``: the rows of ``mats`` in order.
    """
    width = mats[0].shape[1]
    if any(type(m) is not sp.csr_matrix or m.shape[1] != width for m in mats):
        return sp.vstack(mats, format="csr")
    indptr, offset = [np.zeros(1, np.int64)], 0
    for m in mats:
        indptr.append(m.indptr[1:] + offset)
        offset += int(m.indptr[-1])
    indices = np.concatenate([m.indices[: m.indptr[-1]] for m in mats])
    data = np.concatenate([m.data[: m.indptr[-1]] for m in mats])
    shape = (sum(m.shape[0] for m in mats), width)
    out = sp.csr_matrix((data, indices, np.concatenate(indptr)), shape=shape)
    # Rows are copied whole, so the stack is canonical when every part is known to be.
    if all(m.__dict__.get("_has_canonical_format", False) for m in mats):
        out.has_canonical_format = True
    return out


class BatchedModel(Strategy):
    """A strategy whose ``score`` goes through a ``MicroBatcher``; the rest is the inner model's.

    Concurrent ``score`` calls (one user each, from different request threads) are merged into
    one ``UserBatch``, scored once, and split again. ``recommend`` (from the base class) calls
    ``score``, so callers need not know about batching.
    """

    def __init__(
        self,
        inner: Strategy,
        max_batch: int,
        max_delay_ms: float,
        path: str | None = None,
        timeout_s: float = 30.0,
        cuda_in_worker: bool = False,
        reload: Callable[[], Strategy] | None = None,
        concurrency: int = 1,
        inline_when_idle: bool = False,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.serves_cold = inner.serves_cold
        self.path = path
        self.timeout_s = timeout_s
        # Loaded on the CPU only because it was loaded in the gunicorn master: move it to CUDA
        # (if a worker has one) on first use.
        self.cuda_in_worker = cuda_in_worker
        self.reload = reload  # verified load with the saved device setting (CUDA if present)
        self._device_pid: int | None = None
        self._batcher = MicroBatcher(
            self._score_many,
            max_batch=max_batch,
            max_delay_ms=max_delay_ms,
            name=inner.name,
            observer=metrics.observe_batch,
            # Batches in a forward pass at once: torch releases the GIL, so with 2 the next
            # batch runs on the other core instead of waiting (1 torch thread per worker).
            concurrency=concurrency,
            # A lone request (nothing queued, nothing running) runs in its own thread: at
            # low load there is no one to batch with, and the hand-off to a runner and back
            # is a measurable share of an uncached request (docs/design-notes.md).
            inline_when_idle=inline_when_idle,
        )

    # Attributes not defined here (learned arrays, params) are the inner model's.
    def __getattr__(self, attr: str) -> Any:
        if attr == "inner":  # not set yet (during __init__ or unpickling): avoid recursion
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def score(self, users: UserBatch) -> np.ndarray:
        """See ``Strategy.score``: the request joins a micro-batch (or runs unbatched once the
        batcher is closed); raises ``TimeoutError`` past ``timeout_s``.
        """
        try:
            return self._batcher.submit(users, timeout=self.timeout_s)
        except BatcherClosed:
            # Swapped out while this request held it: finish unbatched rather than fail.
            return self.inner.score(users)

    def _score_many(self, batches: list[UserBatch]) -> list[np.ndarray]:
        self._ensure_device()
        if len(batches) == 1:
            return [self.inner.score(batches[0])]
        merged = UserBatch(
            matrix=stack_csr([b.matrix for b in batches]),
            sequences=[s for b in batches for s in (b.sequences or [None] * len(b))],
            types=[t for b in batches for t in (b.types or [None] * len(b))],
            user_index=np.concatenate(
                [b.user_index if b.user_index is not None else np.full(len(b), -1) for b in batches]
            ),
        )
        scores = self.inner.score(merged)
        out, start = [], 0
        for b in batches:
            out.append(scores[start : start + len(b)])
            start += len(b)
        return out

    def _ensure_device(self) -> None:
        """In a worker with CUDA, reload the (CPU-loaded in the master) model onto the GPU once."""
        pid = os.getpid()
        if self._device_pid == pid:
            return
        self._device_pid = pid
        try:
            if not self.cuda_in_worker or self.reload is None:
                return
            import torch

            if torch.cuda.is_available():
                self.inner = self.reload()
                log.info("%s: moved to CUDA in worker %d", self.name, pid)
        except Exception:  # noqa: BLE001 - the CPU copy still serves
            log.exception("%s: could not move to CUDA; serving on the CPU", self.name)

    def close(self) -> None:
        """Close the micro-batcher: refuse new batches, finish the queued ones.

        Returns
        -------
        None
        """
        self._batcher.close()

    def batcher_stats(self) -> dict[str, Any]:
        """The micro-batcher's counters (``MicroBatcher.stats``).

        Returns
        -------
        dict
            Batches, requests, timeouts, errors, batch sizes and queue waits of this process.
        """
        return self._batcher.stats()

    # The Strategy contract; a served model is never trained or saved through the wrapper.
    def fit(self, data):  # pragma: no cover - not used at serve time
        """See ``Strategy.fit``: always raises ``TypeError`` (fit the inner model)."""
        raise TypeError("BatchedModel wraps a fitted model; fit the inner model")

    def similar_items(self, items: np.ndarray, n: int = 10):
        """See ``Strategy.similar_items``: the inner model's answer, unbatched."""
        return self.inner.similar_items(items, n)

    def get_params(self) -> dict[str, Any]:
        """The inner model's parameters (``Strategy.get_params``).

        Returns
        -------
        dict
            The inner model's ``get_params()``.
        """
        return self.inner.get_params()

    def save(self, path: str) -> None:  # pragma: no cover
        """See ``Strategy.save``: saves the inner model."""
        self.inner.save(path)

    @classmethod
    def load(cls, path: str):  # pragma: no cover
        """See ``Strategy.load``: always raises ``TypeError`` (load the inner strategy, then
        wrap it)."""
        raise TypeError("load the inner strategy, then wrap it")
