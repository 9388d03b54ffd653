"""Time ``recsys.store.training_data.load_interactions`` (the first step of ``recsys train``).

    .venv/bin/python bench/store_load_bench.py sqlite:///instance/recsys.db [--repeat 3]

Prints events/users/items, the best and median wall time, and the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

from recsys.store.db import make_engine
from recsys.store.training_data import load_interactions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url", help="SQLAlchemy URL of a store with events")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    engine = make_engine(args.url)
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        data = load_interactions(engine)
        times.append(time.perf_counter() - t0)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus")
    print(f"store:   {engine.url.render_as_string(hide_password=True)} ({engine.dialect.name})")
    print(f"data:    {len(data)} events, {data.n_users} users, {data.n_items} items")
    print(f"load:    best {min(times):.2f}s, median {statistics.median(times):.2f}s")
    print(f"         {len(data) / min(times):,.0f} events/s")


if __name__ == "__main__":
    main()
