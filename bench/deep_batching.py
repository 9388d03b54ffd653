"""The deep (or sequence) model's micro-batching against unbatched scoring, in this process, on
the served model version (``bench/serve_bench.py --deep-only``)."""

from __future__ import annotations

import os
import statistics
import threading
import time

from servekit import bench_env


# -- the deep model's micro-batching -------------------------------------------------------------
def deep_batching(
    args,
    users: list[str],
    concurrency: int = 16,
    duration: float = 3.0,
    rounds: int = 3,
    strategy: str = "deep",
) -> dict:
    """Throughput of the served deep model (or ``strategy``, e.g. ``sequence``, another batched
    one) at 16 concurrent single-user calls, batched or not.

    Unbatched and batched runs alternate ``rounds`` times (``duration`` seconds each) and the
    figures are the medians, with the range of the per-round ratios: on a shared VM one pair
    of runs moves by 20-30 %, mostly on the unbatched side (16 threads contending for the GIL
    around small torch calls)."""
    os.environ.update(bench_env(args))
    import numpy as np
    import torch
    from sqlalchemy import select

    from features.interactions import EVENT_CODE, History, user_batch
    from recsys import create_app
    from recsys.models.batched_model import BatchedModel
    from recsys.models.repository import get_repository
    from recsys.models.runtime import get_runtime
    from recsys.store.db import session_scope
    from recsys.store.models import Event, Item, User

    torch.set_num_threads(1)  # as in a gunicorn worker
    app = create_app()
    try:
        # As a worker serves it: the runtime's CPU variant (DEEP_CPU_PRECISION) of the version.
        lm = get_runtime(app).serving_variant(get_repository(app).load_version(strategy))
    except Exception as e:  # noqa: BLE001 - report, do not fake
        return {"error": f"no {strategy} model: {e}"}
    batches = []
    with session_scope(app) as s:
        for uid in users[:64]:
            rows = s.execute(
                select(Item.external_id, Event.type, Event.value)
                .join(Item, Item.id == Event.item_id)
                .join(User, User.id == Event.user_id)
                .where(User.external_id == uid)
                .order_by(Event.ts.desc(), Event.id.desc())
                .limit(200)
            ).all()
            h = History(
                item_idx=lm.items.indices([r[0] for r in rows]),
                event_type=np.array([EVENT_CODE[r[1]] for r in rows], np.int8),
                value=np.array([r[2] for r in rows], np.float32),
                ts=np.zeros(len(rows), np.int64),
            )
            batches.append(user_batch([h], len(lm.items)))

    def drive(score) -> tuple[float, float]:
        """(calls per second, CPU milliseconds of this process per call)."""
        stop_at = time.monotonic() + duration
        cpu0 = time.process_time()
        counts = [0] * concurrency

        def worker(k: int) -> None:
            i = k
            while time.monotonic() < stop_at:
                score(batches[i % len(batches)])
                counts[k] += 1
                i += concurrency

        t0 = time.monotonic()
        ts = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        calls = sum(counts)
        return calls / (time.monotonic() - t0), (time.process_time() - cpu0) * 1000 / calls

    inner = lm.model
    inner.score(batches[0])  # warm
    # As the runtime builds it (recsys.models.runtime.get_runtime): the configured batcher settings.
    wrapped = BatchedModel(
        inner,
        int(app.config["BATCH_MAX_SIZE"]),
        float(app.config["BATCH_MAX_DELAY_MS"]),
        concurrency=int(app.config["BATCH_CONCURRENCY"]),
        inline_when_idle=bool(app.config["BATCH_INLINE_WHEN_IDLE"]),
    )
    wrapped.score(batches[0])
    plain, batched = [], []
    for _ in range(rounds):
        plain.append(drive(inner.score))
        batched.append(drive(wrapped.score))
    stats = wrapped.batcher_stats()
    wrapped.close()
    ratios = sorted(b[0] / u[0] for u, b in zip(plain, batched, strict=True))
    median = statistics.median
    return {
        "items": len(lm.items),
        "version": lm.version,
        "precision": getattr(inner, "serving_precision_", "?"),
        "rounds": rounds,
        "unbatched_rps": median([u[0] for u in plain]),
        "batched_rps": median([b[0] for b in batched]),
        "speedup": median(ratios),
        "speedup_range": (ratios[0], ratios[-1]),
        "unbatched_cpu_ms": median([u[1] for u in plain]),
        "batched_cpu_ms": median([b[1] for b in batched]),
        "mean_batch": stats["mean_batch_size"],
        "max_batch": int(app.config["BATCH_MAX_SIZE"]),
        "max_delay_ms": float(app.config["BATCH_MAX_DELAY_MS"]),
        "concurrency": int(app.config["BATCH_CONCURRENCY"]),
    }
