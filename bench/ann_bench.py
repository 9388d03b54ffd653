"""Approximate nearest-neighbour libraries compared on a synthetic shop's ALS item factors.

    .venv/bin/python bench/ann_bench.py [--size M] [--queries 1000] [--k 100] [--json OUT]
    .venv/bin/python bench/ann_bench.py --size M --ndcg als,bpr

Generates the shop (``recsys synth``'s generator, ``recsys.offline.synth``), fits the default
ALS (``strategies.als``) on its events and then, for each library installed (hnswlib,
faiss-cpu, usearch), builds an HNSW index over the item factors and answers the two searches
serving does: a user's top-k by inner product (ALS scores are dot products: "mips", the
``strategies._ann`` transform to L2 for hnswlib and faiss, usearch's own ``ip`` metric too) and
an item's top-k by cosine ("cosine", similar items). For each: build seconds, the index file's
size, load seconds, single-query latency (one thread, one query at a time, as a request
does; p50 and p99 in ms) and recall@k against exact numpy search over the same vectors. One
thread everywhere (``OMP_NUM_THREADS=1`` and each library's own setting). ``--ndcg`` instead
measures the project's own index (``strategies._ann``) in use: nDCG@10 of ALS/BPR lists with
it against exact search on a time split of the shop. Results in docs/scale.md ("Candidate
retrieval").
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402


def shop_data(size: str, seed: int = 0):
    """A synthetic shop's events (``recsys synth``'s generator) as ``InteractionData``.

    Parameters
    ----------
    size : str
        ``recsys synth`` size (S, M, L).
    seed : int
        The generator's seed.

    Returns
    -------
    InteractionData
    """
    from features.interactions import InteractionData
    from recsys.offline.synth import SynthParams, generate, sizes

    n_items, n_users, n_events = sizes(size, None, None, None)
    with tempfile.TemporaryDirectory() as tmp:
        generate(tmp, SynthParams(items=n_items, users=n_users, events=n_events, seed=seed))
        users, items, types, ts = [], [], [], []
        with open(os.path.join(tmp, "interactions.csv"), newline="") as f:
            for row in csv.DictReader(f):
                users.append(row["user_id"])
                items.append(row["item_id"])
                types.append(row["event"])
                ts.append(int(row["timestamp"]))
    return InteractionData.from_arrays(
        users, items, types, timestamps=ts, all_item_ids=[f"i{i}" for i in range(n_items)]
    )


def shop_factors(size: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """ALS item factors and user factors of a synthetic shop.

    Parameters
    ----------
    size : str
        ``recsys synth`` size (S, M, L).
    seed : int
        The generator's seed.

    Returns
    -------
    items : np.ndarray of float32, shape (I, f)
    users : np.ndarray of float32, shape (U, f)
    info : dict
        Counts and the fit's seconds.
    """
    from strategies.als import ALSStrategy

    data = shop_data(size, seed)
    t0 = time.perf_counter()
    als = ALSStrategy(num_threads=1, ann_min_items=0).fit(data)
    fit_s = time.perf_counter() - t0
    info = {
        "items": data.n_items,
        "users": data.n_users,
        "events": len(data),
        "als_fit_s": round(fit_s, 1),
    }
    return als.item_factors_, np.asarray(als.model_.user_factors, dtype=np.float32), info


def ndcg_exact_vs_ann(size: str, strategies: list[str], max_users: int = 5000) -> list[dict]:
    """nDCG@10 of each strategy's lists with its index against exact search, on a time split.

    The newest 20% of the shop's events are the test part; the model (``ann_min_items=1``: an
    index whatever the size) is fitted once on the rest, and the same test users with a
    training history (a seeded sample of ``max_users``) get their top 10, seen items
    excluded, both ways.

    Parameters
    ----------
    size : str
        ``recsys synth`` size.
    strategies : list of str
        ``als`` and/or ``bpr``.
    max_users : int
        Test users at most.

    Returns
    -------
    list of dict
        Per strategy: nDCG@10 exact and with the index, their relative difference, the
        share of identical top-10 lists, build seconds and the index's file size.
    """
    from features.interactions import UserBatch
    from recsys.offline.evaluation.metrics import ranking_metrics
    from recsys.offline.evaluation.splits import relevant_matrix, split_data
    from strategies import get_strategy_class
    from strategies.base import Strategy

    train, test = split_data(shop_data(size), "time", fraction=0.2)
    rel = relevant_matrix(test, train.n_users, train.n_items)
    # test users with a training history: ALS serves no empty history (the router sends
    # those to popularity), and a zero query ranks every item equal
    has_history = np.diff(train.matrix().indptr) > 0
    users = np.flatnonzero((np.diff(rel.indptr) > 0) & has_history)
    users = np.sort(np.random.default_rng(0).choice(users, min(max_users, len(users)), False))
    m = train.matrix()[users]
    seqs = train.sequences()
    batch = UserBatch(matrix=m, sequences=[seqs[u] for u in users], user_index=users)
    seen = [m.indices[m.indptr[r] : m.indptr[r + 1]] for r in range(len(users))]
    out = []
    for name in strategies:
        cls = get_strategy_class(name)
        t0 = time.perf_counter()
        model = cls(ann_min_items=1).fit(train)
        fit_s = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            model.save(tmp)
            size_mib = sum(
                os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp) if "ann" in f
            )
        t0 = time.perf_counter()
        ann_ids, _ = model.recommend(batch, n=10, exclude=seen)
        ann_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        exact_ids, _ = Strategy.recommend(model, batch, n=10, exclude=seen)
        exact_s = time.perf_counter() - t0
        # recall@100 of the served search against the exact one (the measure)
        ann100, _ = model.recommend(batch, n=100, exclude=seen)
        exact100, _ = Strategy.recommend(model, batch, n=100, exclude=seen)
        recall100 = float(
            np.mean(
                [len(np.intersect1d(a_, e_)) / 100 for a_, e_ in zip(ann100, exact100, strict=True)]
            )
        )
        a = float(ranking_metrics(ann_ids, rel[users], 10)["ndcg"].mean())
        e = float(ranking_metrics(exact_ids, rel[users], 10)["ndcg"].mean())
        out.append(
            {
                "strategy": name,
                "users": len(users),
                "ndcg@10 exact": round(e, 4),
                "ndcg@10 ann": round(a, 4),
                "relative": round((a - e) / e, 4) if e else None,
                "same top-10": round(float(np.mean((ann_ids == exact_ids).all(axis=1))), 4),
                "recall@100 vs exact": round(recall100, 4),
                "fit_s (index included)": round(fit_s, 1),
                "index_mib": round(size_mib / 2**20, 1),
                "ms/user ann": round(ann_s / len(users) * 1000, 3),
                "ms/user exact": round(exact_s / len(users) * 1000, 3),
            }
        )
        print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    return out


def exact_top(queries: np.ndarray, base: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids by inner product (numpy, in blocks).

    Parameters
    ----------
    queries : np.ndarray, shape (q, d)
    base : np.ndarray, shape (n, d)
    k : int

    Returns
    -------
    np.ndarray of int64, shape (q, k)
    """
    out = []
    for lo in range(0, len(queries), 256):
        s = queries[lo : lo + 256] @ base.T
        part = np.argpartition(-s, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, part, axis=1), axis=1)
        out.append(np.take_along_axis(part, order, axis=1))
    return np.concatenate(out)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of the exact top-k that the approximate top-k found."""
    k = truth.shape[1]
    pairs = zip(found, truth, strict=True)
    return float(np.mean([len(np.intersect1d(a, b)) / k for a, b in pairs]))


def mips_transform(items: np.ndarray) -> tuple[np.ndarray, float]:
    """Items to L2 space: ``[x, sqrt(M^2 - |x|^2)]`` (queries get a 0)."""
    norms = np.linalg.norm(items, axis=1)
    top = float(norms.max()) or 1.0
    extra = np.sqrt(np.maximum(top * top - norms * norms, 0.0))
    return np.hstack([items, extra[:, None]]).astype(np.float32), top


# One setting for all three libraries (HNSW graphs alike): M links a node, the build's and the
# search's candidate lists. M = 32 and ef = 400: at M = 16 inner-product recall@100 on ALS
# factors (power-law norms) stayed under 0.91 whatever ef (docs/scale.md).
LINKS, EF_BUILD, EF_SEARCH = 32, 400, 400


def _hnswlib(space: str, base: np.ndarray, k: int, path: str):
    import hnswlib

    index = hnswlib.Index(space=space, dim=base.shape[1])
    index.init_index(max_elements=len(base), ef_construction=EF_BUILD, M=LINKS, random_seed=0)
    index.set_num_threads(1)
    index.add_items(base, np.arange(len(base)))
    index.save_index(path)

    def load():
        idx = hnswlib.Index(space=space, dim=base.shape[1])
        idx.load_index(path, max_elements=len(base))
        idx.set_num_threads(1)
        idx.set_ef(max(EF_SEARCH, k))
        return idx

    return load, lambda idx, q: idx.knn_query(q, k=k)[0][0]


def _faiss(metric: str, base: np.ndarray, k: int, path: str):
    import faiss

    faiss.omp_set_num_threads(1)
    m = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
    index = faiss.IndexHNSWFlat(base.shape[1], LINKS, m)
    index.hnsw.efConstruction = EF_BUILD
    index.add(base)
    faiss.write_index(index, path)

    def load():
        idx = faiss.read_index(path)
        idx.hnsw.efSearch = max(EF_SEARCH, k)
        return idx

    return load, lambda idx, q: idx.search(q, k)[1][0]


def _usearch(metric: str, base: np.ndarray, k: int, path: str):
    from usearch.index import Index

    index = Index(
        ndim=base.shape[1],
        metric=metric,
        dtype="f32",
        connectivity=LINKS,
        expansion_add=EF_BUILD,
    )
    index.add(np.arange(len(base)), base, threads=1)
    index.save(path)

    def load():
        idx = Index.restore(path)
        idx.expansion_search = max(EF_SEARCH, k)
        return idx

    return load, lambda idx, q: idx.search(q[0], k, threads=1).keys


def run_one(lib: str, task: str, base: np.ndarray, queries: np.ndarray, k: int) -> dict:
    """Build, save, load and query one library on one task (``mips-ip``: inner product,
    ``mips-l2``: the transform to L2, ``cosine``); its figures."""
    truth = exact_top(queries, base, k)
    variant = {"mips-ip": "ip", "mips-l2": "l2 transform", "cosine": "cosine"}[task]
    if task == "mips-l2":
        b, _ = mips_transform(base)
        q = np.hstack([queries, np.zeros((len(queries), 1), np.float32)])
    else:
        b, q = base, queries
    b = np.ascontiguousarray(b, dtype=np.float32)
    q = np.ascontiguousarray(q, dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "index")
        t0 = time.perf_counter()
        if lib == "hnswlib":
            space = {"mips-ip": "ip", "mips-l2": "l2", "cosine": "cosine"}[task]
            load, search = _hnswlib(space, b, k, path)
        elif lib == "faiss":
            load, search = _faiss("l2" if task == "mips-l2" else "ip", b, k, path)
        else:
            metric = {"mips-ip": "ip", "mips-l2": "l2sq", "cosine": "cos"}[task]
            load, search = _usearch(metric, b, k, path)
        build = time.perf_counter() - t0
        size = os.path.getsize(path)
        t0 = time.perf_counter()
        idx = load()
        load_s = time.perf_counter() - t0
        lat, found = [], []
        for row in q:
            t = time.perf_counter()
            ids = search(idx, row[None, :])
            lat.append(time.perf_counter() - t)
            found.append(np.asarray(ids, dtype=np.int64)[:k])
    t0 = time.perf_counter()
    for row in queries:
        s = row @ base.T
        np.argpartition(-s, k)[:k]
    exact_ms = (time.perf_counter() - t0) / len(queries) * 1000
    ms = np.asarray(lat) * 1000
    return {
        "library": lib,
        "task": task.split("-")[0],
        "variant": variant,
        "build_s": round(build, 2),
        "file_mib": round(size / 2**20, 1),
        "load_s": round(load_s, 3),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "exact_ms": round(exact_ms, 3),
        f"recall@{k}": round(recall(np.asarray(found), truth), 4),
    }


def markdown(info: dict, rows: list[dict], k: int) -> str:
    """The results as a markdown table."""
    out = [
        f"{info['items']:,} items, {info['users']:,} users, {info['events']:,} events; ALS "
        f"factors {info['factors']} (fit {info['als_fit_s']} s); {info['queries']} queries",
        "",
        f"| library | search | variant | build s | file MiB | load s | p50 / p99 ms | exact ms "
        f"| recall@{k} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['library']} | {r['task']} | {r['variant']} | {r['build_s']} | {r['file_mib']} "
            f"| {r['load_s']} | {r['p50_ms']} / {r['p99_ms']} | {r['exact_ms']} "
            f"| {r[f'recall@{k}']} |"
        )
    return "\n".join(out)


def main() -> None:
    """Command-line entry: build the shop's factors, compare the libraries, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="M")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--libraries", default="hnswlib,faiss,usearch")
    ap.add_argument("--json", default=None, help="append the results as one JSON line")
    ap.add_argument(
        "--ndcg",
        default=None,
        help="instead: nDCG@10 with the index against exact search for these strategies "
        "(comma-separated: als,bpr) on a time split of the shop",
    )
    args = ap.parse_args()
    if args.ndcg:
        rows = ndcg_exact_vs_ann(args.size, args.ndcg.split(","))
        keys = list(rows[0])
        print("| " + " | ".join(keys) + " |")
        print("|" + "---|" * len(keys))
        for r in rows:
            print("| " + " | ".join(str(r[k]) for k in keys) + " |")
        return
    items, users, info = shop_factors(args.size)
    rng = np.random.default_rng(1)
    info["factors"] = items.shape[1]
    info["queries"] = args.queries
    uq = users[rng.choice(len(users), args.queries, replace=False)]
    norms = np.linalg.norm(items, axis=1)
    unit = items / np.where(norms == 0, 1.0, norms)[:, None]
    iq = unit[rng.choice(len(items), args.queries, replace=False)]
    rows = []
    for lib in args.libraries.split(","):
        tasks = (("mips-ip", items, uq), ("mips-l2", items, uq), ("cosine", unit, iq))
        for task, base, q in tasks:
            try:
                rows.append(run_one(lib, task, base, q, args.k))
            except ImportError as e:
                print(f"{lib}: not installed ({e})", file=sys.stderr)
                break
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(markdown(info, rows, args.k))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"info": info, "rows": rows}) + "\n")


if __name__ == "__main__":
    main()
