"""The sequence model on CUDA: trains, matches the CPU, batches through the micro-batcher.

    .venv/bin/python bench/sequence_cuda_check.py          # on a machine with a GPU; < 2 min

1. fits ``SequenceStrategy`` for a few dozen steps on CUDA (synthetic ordered data: each user
   walks the catalogue in steps of one, so the next item is known);
2. saves it and loads it on the CPU: the scores must match the CUDA ones within 1e-3, and the
   fp16 variant must rank like fp32;
3. runs 16 client threads, one user per call, through ``recsys.models.batched_model.BatchedModel``
   (the runtime's micro-batcher wrapper) with the CUDA model and without batching, and prints a
   short table: calls/s, mean batch size, and the ratio.

Exits 1 (with the reason) if a check fails, 0 otherwise; without CUDA it says so and exits 0.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from features.interactions import EVENT_CODE, History, InteractionData, user_batch  # noqa: E402
from strategies.sequence import SequenceStrategy  # noqa: E402

N_ITEMS = 2000
PARAMS = {"max_len": 50, "dim": 64, "epochs": 4, "batch_size": 128, "lr": 3e-3, "seed": 1}


def synthetic(n_users: int = 3000, seed: int = 0) -> InteractionData:
    rng = np.random.default_rng(seed)
    users, items, ts = [], [], []
    for u in range(n_users):
        start, n = int(rng.integers(N_ITEMS)), int(rng.integers(10, 60))
        for k in range(n):
            users.append(f"u{u}")
            items.append(f"i{(start + k) % N_ITEMS}")
            ts.append(1_700_000_000 + 60 * k)
    return InteractionData.from_arrays(
        users, items, "purchase", timestamps=ts, all_item_ids=[f"i{i}" for i in range(N_ITEMS)]
    )


def batch_of(seqs: list[list[int]]):
    hist = [
        History(
            item_idx=np.asarray(s[::-1], np.int64),
            event_type=np.full(len(s), EVENT_CODE["purchase"], np.int8),
            value=np.ones(len(s), np.float32),
            ts=np.arange(len(s), dtype=np.int64)[::-1],
        )
        for s in seqs
    ]
    return user_batch(hist, N_ITEMS)


def drive(score, batches, clients: int = 16, seconds: float = 3.0) -> float:
    stop = time.monotonic() + seconds
    counts = [0] * clients

    def client(k: int) -> None:
        i = k
        while time.monotonic() < stop:
            score(batches[i % len(batches)])
            counts[k] += 1
            i += clients

    ts = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t0 = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(counts) / (time.monotonic() - t0)


def main() -> int:
    # ``--device cpu`` runs the same checks on the CPU (to try the script without a GPU).
    device = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA here: nothing to check")
        return 0
    from recsys.config import Settings
    from recsys.models.batched_model import BatchedModel

    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}")
    failures = []
    data = synthetic()
    t0 = time.perf_counter()
    model = SequenceStrategy(**PARAMS, device=device).fit(data)
    print(
        f"fit on {model.device_}: {model.steps_} steps, {time.perf_counter() - t0:.1f} s "
        f"({len(data)} events, {N_ITEMS} items, {model.loss_} loss)"
    )
    rng = np.random.default_rng(5)
    seqs = []
    for _ in range(64):
        start, n = int(rng.integers(N_ITEMS)), int(rng.integers(1, 70))
        seqs.append([(start + k) % N_ITEMS for k in range(n)])
    big = batch_of(seqs)
    gpu = model.score(big)
    nxt = np.array([(s[-1] + 1) % N_ITEMS for s in seqs])
    top1 = float((gpu.argmax(1) == nxt).mean())
    print(f"next-item top-1 accuracy on {device}: {top1:.2f}")
    if top1 < 0.5:
        failures.append(f"the CUDA model did not learn the next item (top-1 {top1:.2f})")
    with tempfile.TemporaryDirectory() as d:
        model.save(d)
        cpu = SequenceStrategy.load(d, device="cpu")
    diff = float(np.abs(cpu.score(big) - gpu).max())
    top = float(np.abs(gpu).max())
    print(f"max |CPU - {device}| score difference: {diff:.2e} (scores up to {top:.1f})")
    if diff > 1e-3 * max(1.0, float(np.abs(gpu).max())):
        failures.append(f"CPU and CUDA scores differ by {diff:.2e}")
    for prec in ("fp16", "int8"):
        variant = model.quantized(prec)
        same = float((variant.score(big).argmax(1) == gpu.argmax(1)).mean())
        print(
            f"{variant.serving_precision_} on {variant.serving_device_}: top-1 agreement with "
            f"fp32 {same:.2f}"
        )
        if same < 0.95:
            failures.append(f"{prec} ranks unlike fp32 ({same:.2f})")

    singles = [batch_of([s]) for s in seqs]
    wrapped = BatchedModel(
        model,
        int(Settings.default("BATCH_MAX_SIZE")),
        float(Settings.default("BATCH_MAX_DELAY_MS")),
        concurrency=int(Settings.default("BATCH_CONCURRENCY")),
    )
    one = wrapped.score(singles[3])
    if not np.allclose(one[0], gpu[3], rtol=1e-4, atol=1e-4):
        failures.append("a batched call returned another row than the plain model")
    lock = threading.Lock()

    def plain(b):
        with lock:  # one forward at a time on one model, as the runtime serves unbatched
            return model.score(b)

    drive(plain, singles, seconds=1.0)  # warm-up
    rps_plain = drive(plain, singles)
    rps_batched = drive(wrapped.score, singles)
    stats = wrapped.batcher_stats()
    wrapped.close()
    print()
    print("| 16 clients, one user per call | calls/s | mean batch |")
    print("|---|---:|---:|")
    print(f"| unbatched (locked model) | {rps_plain:,.0f} | 1.0 |")
    print(f"| micro-batched | {rps_batched:,.0f} | {stats['mean_batch_size']:.1f} |")
    print(f"batching ratio: {rps_batched / rps_plain:.1f}x")
    if failures:
        print("FAILED:", "; ".join(failures))
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
