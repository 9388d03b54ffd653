"""Approximate nearest-neighbour candidate retrieval for large catalogues (hnswlib HNSW graphs).

Past ``ann_min_items`` items a strategy with item vectors (ALS, BPR) builds, at the end of its
``fit``, two HNSW indexes: one over its scoring vectors for inner product (a user's top items:
ALS and BPR scores are dot products, BPR's item bias being one more coordinate; an L2 graph
over ``mips_vectors``) and one
over the unit item vectors (cosine: similar items). They are saved as hnswlib's own index files
beside the model's arrays, so the repository's manifest checksums them like every other file
(``recsys.models.artifacts``; a changed byte is refused before hnswlib reads it), and
``params.json`` records their format, the library's version and the graph's settings. Below
the threshold no index is built and the strategy searches exactly, as before.

The index returns candidates only: their scores are recomputed exactly from the vectors
(``top_candidates``), so an approximate search changes which items are found, never their scores.
The library was chosen on measurements (``bench/ann_bench.py``, docs/scale.md "Candidate
retrieval"): build time, query time, file size and recall@100 against exact search.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

# Bumped when the saved form changes. 2: the inner-product index is an L2 graph over the
# augmented vectors (``mips_vectors``); 1 (an hnswlib "ip" graph) is still read.
ANN_FORMAT = 2
READABLE_FORMATS = (1, 2)
# Items from which a fit builds the indexes (``ann_min_items`` hyperparameter's default;
# ``ANN_MIN_ITEMS`` setting for ``recsys train``).
DEFAULT_MIN_ITEMS = 200_000
# HNSW graph settings (docs/scale.md): links per node, the build's and the search's candidate
# lists. Inner-product graphs over ALS factors (power-law norms) reach their items through
# links, not through a wider search: recall@100 at 50k items was 0.69 / 0.86 / 0.92 with
# M = 16 / 32 / 48, and a search list of 400 or 2000 changed it by under 0.01.
LINKS = 48
EF_BUILD = 200
EF_SEARCH = 600
# The inner-product index's search list. hnswlib's "ip" graph found 42% of BPR's exact top 10 at
# 50k items (ALS: 100%), whatever the list; the same vectors as an L2 graph (``mips_vectors``)
# found 88% with 600 and 99% with 3,000 (ALS: 100% both; docs/scale.md).
EF_SEARCH_MIPS = 3000
# Inner product: the items of the largest norms are scored exactly besides the graph's
# candidates (``head_ids``): they are the ones every list starts with, and the ones an
# inner-product graph reaches worst. At 50k items (2%: 1,000), M = 48: recall@100 0.925
# without, 0.975 with them (recall@10 0.985 -> 1.0), 0.14 ms more a query.
HEAD_MIN, HEAD_SHARE = 256, 0.02


def mips_vectors(vectors: np.ndarray) -> np.ndarray:
    """Item vectors for a maximum-inner-product search in an L2 graph: each row gets one more
    coordinate, sqrt(M - |x|^2), M the largest squared norm, so every row has norm sqrt(M);
    a query gets a 0 there. Then |q - x|^2 = |q|^2 + M - 2 q.x: the nearest rows are the rows
    of the largest inner product (Bachrach et al. 2014), and the graph is one of points on a
    sphere, which HNSW searches well.

    Parameters
    ----------
    vectors : np.ndarray, shape (n, d)

    Returns
    -------
    np.ndarray of float32, shape (n, d + 1)
    """
    v = np.asarray(vectors, dtype=np.float32)
    sq = np.einsum("ij,ij->i", v, v, dtype=np.float64)
    extra = np.sqrt(np.maximum(sq.max(initial=0.0) - sq, 0.0)).astype(np.float32)
    return np.ascontiguousarray(np.hstack([v, extra[:, None]]))


def index_cost(n_items: int, dim: int, min_items: int | None) -> tuple[float, float]:
    """Memory and single-core seconds of the two indexes a fit builds (0 below the threshold).

    Each holds the vectors and ``2 LINKS`` links a node on its base layer (hnswlib's layout),
    about ``I (4 d + 8 LINKS + 64)`` bytes; a build inserts every item with a search list of
    ``EF_BUILD``, ~80 ``EF_BUILD d`` operations an item (calibrated on 50k items, d = 32: 17-26
    s on the shared 2-core machine, ``bench/ann_bench.py``).

    Parameters
    ----------
    n_items : int
        Catalogue size (I).
    dim : int
        Vector dimension (d).
    min_items : int or None
        The strategy's ``ann_min_items`` (None: ``DEFAULT_MIN_ITEMS``; 0: never).

    Returns
    -------
    bytes : float
    seconds : float
    """
    threshold = DEFAULT_MIN_ITEMS if min_items is None else min_items
    if threshold <= 0 or n_items < threshold:
        return 0.0, 0.0
    memory = 2.0 * n_items * (4 * dim + 8 * LINKS + 64)
    return memory, 2.0 * 80.0 * n_items * EF_BUILD * dim / 1e9


def _hnswlib():
    import hnswlib

    return hnswlib


def library_version() -> str:
    """The installed hnswlib version (recorded with each saved index).

    Returns
    -------
    str
        E.g. ``"0.8.0"``; ``"unknown"`` when the package does not say.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hnswlib")
    except PackageNotFoundError:
        return "unknown"


class AnnIndex:
    """One HNSW index over n vectors of dimension d, searched one thread per call.

    Parameters
    ----------
    index : hnswlib.Index
        The built or loaded index.
    space : {"ip", "cosine"}
        Its metric.
    n : int
        Vectors indexed (ids 0 .. n-1: the model's item indices).
    dim : int
        Their dimension.
    head : np.ndarray of int64, optional
        Ids always returned besides the graph's (``head_ids``; inner product only).
    mips : bool
        The graph is an L2 one over ``mips_vectors`` (queries get a 0 coordinate); False: an
        hnswlib graph of ``space`` itself (cosine, and inner-product indexes of format 1).
    """

    def __init__(
        self,
        index: Any,
        space: str,
        n: int,
        dim: int,
        head: np.ndarray | None = None,
        mips: bool = False,
    ) -> None:
        self.index = index
        self.space = space
        self.n = n
        self.dim = dim
        self.head = head if head is not None else np.zeros(0, dtype=np.int64)
        self.mips = mips

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        space: str,
        threads: int = 0,
        seed: int = 0,
        skip: np.ndarray | None = None,
    ) -> AnnIndex:
        """Build an index over ``vectors`` (row i gets id i).

        Parameters
        ----------
        vectors : np.ndarray of float, shape (n, d)
            Item vectors.
        space : {"ip", "cosine"}
            Inner product (scores are dot products) or cosine.
        threads : int
            Build threads; 0: all cores.
        seed : int
            The graph's random seed.
        skip : np.ndarray of int, optional
            Rows left out of the graph (a model's untrained items: never returned anyway, and
            as thousands of identical points they broke the graph: BPR's recall@100 at 50k
            items was 0.54 with its 7,445 zero rows in, docs/scale.md).

        Returns
        -------
        AnnIndex
        """
        hnswlib = _hnswlib()
        v = np.ascontiguousarray(vectors, dtype=np.float32)
        mips = space == "ip"
        graph = mips_vectors(v) if mips else v
        index = hnswlib.Index(space="l2" if mips else space, dim=graph.shape[1])
        index.init_index(
            max_elements=max(len(v), 1), ef_construction=EF_BUILD, M=LINKS, random_seed=seed
        )
        index.set_num_threads(threads or os.cpu_count() or 1)
        ids = np.arange(len(v))
        if skip is not None and len(skip):
            ids = np.setdiff1d(ids, skip)
        index.add_items(graph[ids], ids)
        return cls._ready(index, space, len(v), v.shape[1], v, mips)

    @classmethod
    def _ready(
        cls,
        index: Any,
        space: str,
        n: int,
        dim: int,
        vectors: np.ndarray | None,
        mips: bool = False,
    ) -> AnnIndex:
        index.set_num_threads(1)  # a request's search: one thread (gunicorn's workers share cores)
        index.set_ef(EF_SEARCH_MIPS if mips else EF_SEARCH)
        head = head_ids(vectors) if space == "ip" and vectors is not None else None
        return cls(index, space, n, dim, head, mips)

    def save(self, path: str) -> dict[str, Any]:
        """Write the index as hnswlib's own file ``path`` (no pickle).

        Parameters
        ----------
        path : str
            File to write.

        Returns
        -------
        dict of str to Any
            What ``load`` needs: space, n, dim (recorded in ``params.json``).
        """
        self.index.save_index(path)
        meta = {"space": self.space, "n": self.n, "dim": self.dim}
        if self.mips:
            meta["graph"] = "l2-mips"
        return meta

    @classmethod
    def load(cls, path: str, meta: dict[str, Any], vectors: np.ndarray | None = None) -> AnnIndex:
        """Read an index ``save`` wrote (the caller has checked its checksum).

        Parameters
        ----------
        path : str
            The index file.
        meta : dict of str to Any
            ``save``'s return value.
        vectors : np.ndarray, optional
            The vectors it indexes (an inner-product index's head is derived from them).

        Returns
        -------
        AnnIndex

        Raises
        ------
        ValueError
            When ``vectors`` do not match the index's size.
        """
        hnswlib = _hnswlib()
        n, dim = int(meta["n"]), int(meta["dim"])
        if vectors is not None and vectors.shape != (n, dim):
            raise ValueError(f"candidate index is for {n} x {dim} vectors, not {vectors.shape}")
        mips = meta.get("graph") == "l2-mips"
        index = hnswlib.Index(space="l2" if mips else meta["space"], dim=dim + 1 if mips else dim)
        index.load_index(path, max_elements=max(n, 1))
        return cls._ready(index, meta["space"], n, dim, vectors, mips)

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """Approximate top-k ids per query (-1 pads where fewer come back).

        Parameters
        ----------
        queries : np.ndarray of float, shape (b, d)
        k : int
            Ids per query (at most ``n``).

        Returns
        -------
        np.ndarray of int64, shape (b, min(k, n) + len(head))
            The graph's ids, then the head's (which may repeat some; ``top_candidates`` drops
            them).
        """
        k = min(k, self.index.get_current_count())  # the graph may hold fewer than n
        if k <= 0 or len(queries) == 0:
            return np.full((len(queries), max(k, 0)), -1, dtype=np.int64)
        # hnswlib searches with max(ef, k) candidates; ef is set once (``_ready``), never per
        # call: concurrent searches of one index (a worker's threads) share it.
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if self.mips:
            q = np.ascontiguousarray(np.hstack([q, np.zeros((len(q), 1), np.float32)]))
        try:
            ids = self.index.knn_query(q, k=k)[0].astype(np.int64)
        except RuntimeError:  # fewer than k reachable (tiny or degenerate graphs)
            ids = self._search_each(q, k)
        if len(self.head):
            ids = np.hstack([ids, np.broadcast_to(self.head, (len(q), len(self.head)))])
        return ids

    def _search_each(self, q: np.ndarray, k: int) -> np.ndarray:
        out = np.full((len(q), k), -1, dtype=np.int64)
        for r in range(len(q)):
            for kk in (k // 2, k // 4, 10, 1):
                try:
                    ids, _ = self.index.knn_query(q[r : r + 1], k=max(kk, 1))
                except RuntimeError:
                    continue
                out[r, : ids.shape[1]] = ids[0]
                break
        return out


def head_ids(vectors: np.ndarray) -> np.ndarray:
    """The ids of the largest-norm vectors: ``max(HEAD_MIN, HEAD_SHARE * n)`` of them.

    Parameters
    ----------
    vectors : np.ndarray, shape (n, d)

    Returns
    -------
    np.ndarray of int64
        Sorted ids (all of them for a catalogue smaller than the head).
    """
    n = len(vectors)
    h = min(n, max(HEAD_MIN, int(HEAD_SHARE * n)))
    if h >= n:
        return np.arange(n, dtype=np.int64)
    norms = np.einsum("ij,ij->i", vectors, vectors)
    return np.sort(np.argpartition(-norms, h - 1)[:h]).astype(np.int64)


def top_candidates(
    index: AnnIndex,
    queries: np.ndarray,
    vectors: np.ndarray,
    n: int,
    exclude: list[np.ndarray | None] | None = None,
    never: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's top n: the index's candidates (n plus the query's own exclusions, and the
    head), excluded ones dropped, scored exactly by dot product with ``vectors``.

    One search per query, each as wide as its own exclusions need (one long history does not
    widen the others').

    Parameters
    ----------
    index : AnnIndex
        The index over ``vectors``.
    queries : np.ndarray, shape (b, d)
        Query vectors.
    vectors : np.ndarray, shape (n_items, d)
        Item vectors the index was built over.
    n : int
        Results per query.
    exclude : list of np.ndarray, optional
        Per-query ids never to return (entries may be None).
    never : np.ndarray of int, optional
        Ids never to return for any query (the model's untrained items).

    Returns
    -------
    ids : np.ndarray of int64, shape (b, n)
    scores : np.ndarray of float32, shape (b, n)
        As ``strategies.base.top_n``: best first, padded with -1 / -inf.
    """
    b = len(queries)
    out = np.full((b, n), -1, dtype=np.int64)
    best = np.full((b, n), -np.inf, dtype=np.float32)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    for r in range(b):
        ex = exclude[r] if exclude is not None else None
        ex = np.asarray(ex if ex is not None else (), dtype=np.int64)
        ids = index.search(q[r : r + 1], n + len(ex))[0]
        ids = np.unique(ids[ids >= 0])  # sorted: ties keep the lower id first
        if len(ex):
            ids = ids[~np.isin(ids, ex, assume_unique=False)]
        if never is not None and len(never):
            ids = ids[~np.isin(ids, never, assume_unique=True)]
        scores = vectors[ids] @ q[r]
        top = np.argsort(-scores, kind="stable")[:n]
        out[r, : len(top)] = ids[top]
        best[r, : len(top)] = scores[top]
    return out, best
