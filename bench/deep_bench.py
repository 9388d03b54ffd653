"""Deep model benchmark: accuracy, fp32 vs int8/fp16 size and speed, micro-batching throughput.

``--model sequence`` runs the same parts for the sequence-aware model (strategies.sequence):
    .venv/bin/python bench/deep_bench.py --model sequence --part batching

    .venv/bin/python bench/deep_bench.py                     # everything, ml-100k if present
    .venv/bin/python bench/deep_bench.py --part accuracy      # nDCG etc. per precision only
    .venv/bin/python bench/deep_bench.py --part batching      # 16 threads, batched vs not
    .venv/bin/python bench/deep_bench.py --dataset synthetic  # no ml-100k needed (GPU box)
    .venv/bin/python bench/deep_bench.py --dataset online-retail --part fit

Accuracy uses the Recommenders protocol of ../shared/datasets/BENCHMARKS.md (ml-100k, 75/25
split stratified per item, seed 42, top-10 over all items, seen removed, every test rating
relevant). The split and metrics come from ``recsys.offline.evaluation`` when that package provides
them; until then a local implementation of the same definitions below is used (printed).
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import sys
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from features.interactions import InteractionData  # noqa: E402
from recsys.config import Settings  # noqa: E402
from recsys.models.batcher import MicroBatcher  # noqa: E402
from strategies.base import UserBatch  # noqa: E402
from strategies.deep import DeepStrategy  # noqa: E402
from strategies.sequence import SequenceStrategy  # noqa: E402

MODELS = {"deep": DeepStrategy, "sequence": SequenceStrategy}
# The model class the parts fit (--model).
Model = DeepStrategy

ML100K = os.path.join(ROOT, "..", "shared", "datasets", "ml-100k", "u.data")
RETAIL = os.path.join(ROOT, "data", "online_retail.csv.gz")
K = 10


# -- data -------------------------------------------------------------------------------------
def load_ml100k() -> InteractionData:
    raw = np.loadtxt(ML100K, dtype=np.int64)
    return InteractionData.from_arrays(
        raw[:, 0].astype(str), raw[:, 1].astype(str), "rating", raw[:, 2], raw[:, 3]
    )


def load_online_retail() -> InteractionData:
    """Purchases (positive quantity, known customer) from the bundled CSV."""
    import csv
    from datetime import datetime

    users, items, ts = [], [], []
    with gzip.open(RETAIL, "rt", encoding="utf-8", errors="replace") as f:
        for row in csv.DictReader(f):
            if not row["CustomerID"] or row["InvoiceNo"].startswith("C"):
                continue
            if float(row["Quantity"]) <= 0:
                continue
            users.append(row["CustomerID"])
            items.append(row["StockCode"])
            ts.append(int(datetime.strptime(row["InvoiceDate"], "%Y-%m-%d %H:%M:%S").timestamp()))
    return InteractionData.from_arrays(users, items, "purchase", None, ts)


def synthetic(n_users: int = 1500, n_items: int = 1200, seed: int = 0) -> InteractionData:
    """Users drawn from 30 latent tastes, each a cluster of items plus popularity noise."""
    rng = np.random.default_rng(seed)
    n_groups = 30
    group_of_item = rng.integers(0, n_groups, n_items)
    pop = rng.zipf(1.5, n_items).astype(float)
    pop /= pop.sum()
    us, its = [], []
    for u in range(n_users):
        g = rng.integers(0, n_groups)
        members = np.flatnonzero(group_of_item == g)
        k = rng.integers(15, 80)
        mine = rng.choice(members, size=min(len(members), int(k * 0.7)), replace=False)
        noise = rng.choice(n_items, size=int(k * 0.3), p=pop)
        for i in np.unique(np.concatenate([mine, noise])):
            us.append(u)
            its.append(int(i))
    return InteractionData.from_arrays(
        np.asarray(us).astype(str),
        np.asarray(its).astype(str),
        "purchase",
        all_item_ids=np.arange(n_items).astype(str),
    )


def load(name: str) -> InteractionData:
    if name == "auto":
        name = "ml100k" if os.path.exists(ML100K) else "synthetic"
    if name == "ml100k":
        return load_ml100k()
    if name == "online-retail":
        return load_online_retail()
    return synthetic()


# -- protocol (local fallback for recsys.offline.evaluation) -------------------------
def _local_stratified_item_split(data: InteractionData, ratio: float = 0.75, seed: int = 42):
    """Recommenders' python_stratified_split(filter_by="item", seed): per item, a random order
    (np.random.seed(seed); rand per row), first round(ratio * count) rows to train."""
    np.random.seed(seed)
    r = np.random.rand(len(data))
    order = np.lexsort((r, data.item_idx))
    item_sorted = data.item_idx[order]
    counts = np.bincount(data.item_idx, minlength=data.n_items)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(order)) - starts[item_sorted] + 1
    train_sorted = rank <= np.round(ratio * counts[item_sorted])
    mask = np.zeros(len(data), dtype=bool)
    mask[order] = train_sorted
    return data.subset(mask), data.subset(~mask)


def _local_metrics(recs: np.ndarray, test_rows: list[np.ndarray], k: int = K) -> dict:
    """Recommenders' map / ndcg_at_k / precision_at_k / recall_at_k (relevancy top_k, binary)."""
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    nd, pr, rc, ap = [], [], [], []
    for top, rel in zip(recs, test_rows, strict=True):
        if len(rel) == 0:
            continue
        hit = np.isin(top[:k], rel)
        n_rel = len(rel)
        dcg = float((hit * disc).sum())
        idcg = float(disc[: min(n_rel, k)].sum())
        nd.append(dcg / idcg)
        pr.append(hit.sum() / k)
        rc.append(hit.sum() / n_rel)
        ranks = np.flatnonzero(hit) + 1
        ap.append(float((np.arange(1, len(ranks) + 1) / ranks).sum() / n_rel))
    return {
        "map": np.mean(ap),
        "ndcg": np.mean(nd),
        "precision": np.mean(pr),
        "recall": np.mean(rc),
    }


def split(data: InteractionData, seed: int = 42):
    try:
        from recsys.offline.evaluation.splits import stratified_item_split

        split = stratified_item_split(data, ratio=0.75, seed=seed)
        return split, "recsys.offline.evaluation.splits"
    except ImportError:
        return _local_stratified_item_split(data, seed=seed), "local (bench/deep_bench.py)"


def metrics(recs: np.ndarray, xte, users: np.ndarray) -> dict:
    try:
        from recsys.offline.evaluation.metrics import ranking_metrics, summarize

        per = ranking_metrics(recs, xte[users], K)
        means = summarize(per)
        return {k: means[k] for k in ("map", "ndcg", "precision", "recall")}
    except ImportError:
        return _local_metrics(recs, [xte[i].indices for i in users])


def user_rows(data: InteractionData, rows) -> UserBatch:
    """Users ``rows`` of ``data`` as a batch: matrix rows and ordered sequences (the sequence
    model reads the order; the deep model the matrix)."""
    cache = data.info.setdefault("_bench", {})
    if "matrix" not in cache:
        cache["matrix"], cache["sequences"] = data.matrix(), data.sequences()
    rows = np.asarray(rows)
    return UserBatch(
        matrix=cache["matrix"][rows],
        sequences=[cache["sequences"][u] for u in rows],
        user_index=rows,
    )


def evaluate(model, train: InteractionData, test: InteractionData) -> dict:
    """Top-10 over all items, train items removed, every test event relevant."""
    xtr = train.matrix()
    xte = test.matrix()
    users = np.flatnonzero(np.diff(xte.indptr) > 0)
    recs = []
    for s in range(0, len(users), 256):
        u = users[s : s + 256]
        batch = user_rows(train, u)
        exclude = [xtr[i].indices for i in u]
        ids, _ = model.recommend(batch, n=K, exclude=exclude)
        recs.append(ids)
    return metrics(np.vstack(recs), xte, users)


# -- timing -----------------------------------------------------------------------------------
def time_score(model, batch: UserBatch, reps: int) -> float:
    model.score(batch)  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        model.score(batch)
    return (time.perf_counter() - t0) / reps * 1000


def machine() -> str:
    dev = "cuda: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return (
        f"machine: {platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"(threads {torch.get_num_threads()}), device {dev}, python {platform.python_version()}"
    )


def part_accuracy(data, name: str, params: dict, validate: bool = False) -> DeepStrategy:
    (train, test), how = split(data)
    if validate:
        # Tune on a validation split carved out of the training part; the test part stays unseen.
        (train, test), how = split(train, seed=1)
        how += ", VALIDATION (train re-split, seed 1)"
    print(f"\n== accuracy: {name}, 75/25 stratified per item, seed 42, split: {how}")
    t0 = time.perf_counter()
    model = Model(**params).fit(train)
    print(
        f"fit {time.perf_counter() - t0:.1f}s on {model.device_}, {model.steps_} steps "
        f"({train.n_users} users x {train.n_items} items, {len(train)} events)"
    )
    b1 = user_rows(train, [0])
    b32 = user_rows(train, np.arange(32))
    variants = ["fp32", "int8"] + (["fp16"] if torch.cuda.is_available() else [])
    print(
        "| precision | device | state_dict bytes | ms/batch of 1 | ms/batch of 32 | "
        "nDCG@10 | P@10 | R@10 | MAP |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for prec in variants:
        m = model if prec == "fp32" else model.quantized(prec)
        met = evaluate(m, train, test)
        t1 = time_score(m, b1, 200)
        t32 = time_score(m, b32, 50)
        print(
            f"| {prec} | {m.serving_device_} | {m.serving_nbytes():,} | {t1:.2f} | {t32:.2f} | "
            f"{met['ndcg']:.4f} | {met['precision']:.4f} | {met['recall']:.4f} | "
            f"{met['map']:.4f} |"
        )
    return model


def part_last_out(data, name: str, params: dict):
    """BENCHMARKS.md section E: each user's newest event held out, HR@10 over unseen items,
    per serving precision (fp32, int8 on the CPU, fp16 on CUDA), with the time of one call."""
    from recsys.offline.evaluation.splits import leave_last_out

    train, test = leave_last_out(data)
    t0 = time.perf_counter()
    model = Model(**params).fit(train)
    print(
        f"\n== leave-last-out: {name}: fit {time.perf_counter() - t0:.1f}s, {model.steps_} steps; "
        "BENCHMARKS.md E: SASRec 0.121, EASE 0.051, most popular 0.042"
    )
    print("| precision | device | HR@10 | nDCG@10 | ms/batch of 1 | ms/batch of 32 |")
    print("|---|---|---|---|---|---|")
    b1 = user_rows(train, [0])
    b32 = user_rows(train, np.arange(32))
    for prec in ["fp32", "int8"] + (["fp16"] if torch.cuda.is_available() else []):
        m = model if prec == "fp32" else model.quantized(prec)
        evaluated = evaluate(m, train, test)
        # One relevant item per user: recall@10 is the hit rate.
        print(
            f"| {prec} | {m.serving_device_} | {evaluated['recall']:.4f} | "
            f"{evaluated['ndcg']:.4f} | {time_score(m, b1, 200):.2f} | "
            f"{time_score(m, b32, 50):.2f} |"
        )
    return model, train


def part_fit(data, name: str, params: dict) -> DeepStrategy:
    t0 = time.perf_counter()
    model = Model(**params).fit(data)
    print(
        f"\n== fit: {name}: {data.n_users} users x {data.n_items} items, {len(data)} events: "
        f"{time.perf_counter() - t0:.1f}s on {model.device_}, {model.steps_} steps "
        f"(torch threads during fit: all {os.cpu_count()} cores)"
    )
    return model


def part_batching(
    model: DeepStrategy,
    data,
    threads: int,
    seconds: float,
    max_batch: int,
    delay_ms: float,
    concurrency: int = 1,
) -> None:
    """16 client threads each scoring one user at a time: through the batcher vs a locked model."""
    n_users = data.n_users
    print(
        f"\n== batching: {threads} client threads, one user per request, {seconds:.0f}s each, "
        f"max_batch {max_batch}, max_delay {delay_ms} ms, precision {model.serving_precision_}, "
        f"batch runner threads 1 and {concurrency}"
    )

    def score_many(rows: list[int]) -> list[np.ndarray]:
        s = model.score(user_rows(data, rows))
        return [s[i] for i in range(len(rows))]

    lock = threading.Lock()

    def unbatched(u: int) -> np.ndarray:
        # One model instance serves every thread: torch runs one forward at a time per model
        # in our runtime, as it would under a single-model lock.
        with lock:
            return model.score(user_rows(data, [u]))[0]

    sizes: dict[int, list[int]] = {}

    def batcher(runners: int) -> MicroBatcher:
        sizes[runners] = []
        return MicroBatcher(
            score_many,
            max_batch=max_batch,
            max_delay_ms=delay_ms,
            name="bench",
            observer=lambda n, w: sizes[runners].append(n),
            concurrency=runners,
        )

    def run(call) -> float:
        stop = time.perf_counter() + seconds
        counts = [0] * threads

        def client(t: int) -> None:
            rng = np.random.default_rng(t)
            while time.perf_counter() < stop:
                call(int(rng.integers(n_users)))
                counts[t] += 1

        ts = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return sum(counts) / (time.perf_counter() - t0)

    run(unbatched)  # warm-up
    rps_un = run(unbatched)
    print(f"unbatched: {rps_un:,.0f} req/s")
    for runners in sorted({1, concurrency}):
        b = batcher(runners)
        rps_b = run(lambda u, b=b: b.submit(u, timeout=5.0))
        b.close()
        print(
            f"micro-batched, {runners} runner thread(s): {rps_b:,.0f} req/s | "
            f"ratio {rps_b / rps_un:.1f}x | mean batch {np.mean(sizes[runners]):.1f}, "
            f"max {max(sizes[runners])}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--dataset", default="auto", choices=["auto", "ml100k", "synthetic", "online-retail"]
    )
    ap.add_argument(
        "--part",
        default="all",
        choices=["all", "accuracy", "lastout", "fit", "batching", "serving"],
        help="serving: lastout, then batching with that model (one fit)",
    )
    ap.add_argument("--model", default="deep", choices=sorted(MODELS))
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--max-steps", type=int, default=None, help="0 = no step budget")
    ap.add_argument("--hidden", type=str, default=None, help="e.g. 600 or 600,200")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--dropout", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--weight-decay", type=float, default=None)
    ap.add_argument("--validate", action="store_true", help="score on a validation split")
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-delay-ms", type=float, default=2.0)
    ap.add_argument(
        "--concurrency",
        type=int,
        default=Settings.default("BATCH_CONCURRENCY"),
        help="batch runner threads (RECSYS_BATCH_CONCURRENCY); 1 is also measured",
    )
    ap.add_argument("--torch-threads", type=int, default=None)
    ap.add_argument(
        "--precision", default="fp32", choices=["fp32", "int8", "fp16"], help="for --part batching"
    )
    args = ap.parse_args()
    global Model
    Model = MODELS[args.model]
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    params: dict = {}
    for key in ("epochs", "lr", "dropout", "batch_size", "weight_decay"):
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)
    if args.max_steps is not None:
        params["max_steps"] = args.max_steps or None
    if args.hidden and args.model == "deep":
        params["hidden"] = [int(h) for h in args.hidden.split(",")]
    print(machine())
    name = (
        args.dataset
        if args.dataset != "auto"
        else ("ml100k" if os.path.exists(ML100K) else "synthetic")
    )
    data = load(name)
    print(f"model: {args.model}, dataset: {name}, params: {params or 'defaults'}")
    model = None
    if args.part in ("all", "accuracy"):
        model = part_accuracy(data, name, params, args.validate)
    if args.part in ("all", "lastout") and name != "synthetic":
        part_last_out(data, name, params)
    if args.part == "serving":
        model, train = part_last_out(data, name, params)
        for prec in ["fp32"] if args.precision == "fp32" else ["fp32", args.precision]:
            m = model if prec == "fp32" else model.quantized(prec)
            part_batching(
                m, train, args.threads, args.seconds, args.max_batch, args.max_delay_ms,
                args.concurrency,
            )  # fmt: skip
        return
    if args.part in ("all", "fit") or args.part == "batching":
        model = part_fit(data, name, params)
        if args.part == "all" and name != "online-retail" and os.path.exists(RETAIL):
            part_fit(load_online_retail(), "online-retail", params)
    if args.part in ("all", "batching"):
        if args.precision != "fp32":
            model = model.quantized(args.precision)
        part_batching(
            model,
            data,
            args.threads,
            args.seconds,
            args.max_batch,
            args.max_delay_ms,
            args.concurrency,
        )


if __name__ == "__main__":
    main()
