"""Record the API's answers to a fixed set of requests, for "behaviour unchanged" checks.

Builds a small deterministic shop (synthetic CSV, SQLite, in-process cache), trains real
strategies through the ``recsys`` CLI, then sends a fixed list of requests through Flask's test
client and writes one JSON file: status, the headers that matter and the body of each answer,
with what changes from run to run (timings, request ids, dates, version ids) masked.

Run it on two trees and diff the outputs::

    .venv/bin/python scripts/api_snapshot.py --out /tmp/before.json     # on the old commit
    .venv/bin/python scripts/api_snapshot.py --out /tmp/after.json      # on the new one
    diff /tmp/before.json /tmp/after.json

Only public surfaces are used (``create_app``, the CLI, HTTP), so the script runs unchanged on
both sides of a refactor.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import tempfile

ADMIN = "snapshot-admin-token"
# Header values that differ between runs of the same tree.
VOLATILE_HEADERS = {"date", "server-timing", "x-request-id", "etag", "last-modified", "age"}
KEPT_HEADERS = {"content-type", "cache-control", "x-recsys-route", "x-recsys-degraded", "vary"}
MASKS = [
    (re.compile(r"\d{8}T\d{6}(?:\.\d+)?Z?(?:-[0-9a-f]+)?"), "<version>"),  # model version ids
    (re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})?"), "<ts>"),
    (re.compile(r"[0-9a-f]{32,64}"), "<hash>"),
]
TIMING_KEYS = {
    "took_ms",
    "elapsed_ms",
    "ms",
    "uptime_seconds",
    "age_seconds",
    "seconds",
    "idle_seconds",
    "load_seconds",
    "load_seconds_mean",
    "pid",
    "p50",
    "p90",
    "p95",
    "p99",
    "path",
}


def write_shop(folder: str, seed: int = 7) -> tuple[str, str]:
    """A small shop: 60 items in 5 categories, 120 users with popularity-skewed histories."""
    rng = random.Random(seed)
    cats = ["kitchen", "garden", "toys", "books", "bags"]
    items = os.path.join(folder, "items.csv")
    with open(items, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "title", "description", "categories", "price", "available"])
        for i in range(60):
            cat = cats[i % 5]
            w.writerow([f"I{i:03d}", f"Item {i}", f"a {cat} thing", cat, 5 + i % 17, "true"])
    events = os.path.join(folder, "interactions.csv")
    with open(events, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "event", "value", "timestamp"])
        t0 = 1_700_000_000
        for u in range(120):
            home = u % 5
            for k in range(rng.randint(2, 14)):
                if rng.random() < 0.7:
                    i = home + 5 * int(rng.paretovariate(1.2)) % 60
                else:
                    i = int(rng.paretovariate(1.0) * 3) % 60
                kind = rng.choice(["view", "view", "click", "purchase"])
                w.writerow([f"U{u:03d}", f"I{i % 60:03d}", kind, "", t0 + u * 1000 + k * 60])
    return events, items


def mask(value):
    if isinstance(value, dict):
        return {k: ("<t>" if k in TIMING_KEYS else mask(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v) for v in value]
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, str):
        for pattern, repl in MASKS:
            value = pattern.sub(repl, value)
        return value
    return value


REQUESTS: list[tuple[str, str, dict | None, bool]] = [
    # method, path, json body, admin. Not /readyz: it reports background model loading,
    # which races with the requests.
    ("GET", "/healthz", None, False),
    ("GET", "/v1/popular?n=5", None, False),
    ("GET", "/v1/popular?n=5&category=toys", None, False),
    ("GET", "/v1/users/U001/recommendations?n=5", None, False),
    ("GET", "/v1/users/U002/recommendations?n=5&explain=true", None, False),
    ("GET", "/v1/users/U003/recommendations?n=3&page=2", None, False),
    ("GET", "/v1/users/U004/recommendations?n=5&category=books", None, False),
    ("GET", "/v1/users/NEWBIE/recommendations?n=5", None, False),
    ("GET", "/v1/users/U001/recommendations?n=0", None, False),
    ("GET", "/v1/users/U001/recommendations?n=abc", None, False),
    ("GET", "/v1/items/I003/similar?n=5", None, False),
    ("GET", "/v1/items/NOPE/similar?n=5", None, False),
    ("POST", "/v1/recommendations", {"items": ["I001", "I006"], "n": 5}, False),
    ("POST", "/v1/recommendations", {"items": "bad"}, False),
    ("POST", "/v1/events", [{"user_id": "U005", "item_id": "I010", "type": "click"}], False),
    ("POST", "/v1/events", {"user_id": "U005"}, False),
    ("GET", "/v1/users/U005/recommendations?n=5", None, False),
    ("GET", "/v1/items/I001", None, False),
    ("GET", "/v1/items?limit=3", None, False),
    ("GET", "/v1/users/U001", None, False),
    ("GET", "/v1/admin/strategies", None, True),
    ("GET", "/v1/admin/strategies", None, False),
    ("GET", "/v1/admin/routing", None, True),
    ("PATCH", "/v1/admin/routing", {"warm_strategies": ["nope"]}, True),
    ("GET", "/v1/admin/models/ease", None, True),
    ("GET", "/v1/admin/experiments", None, True),
    ("GET", "/v1/nothing-here", None, False),
    ("GET", "/v1/popular?n=5&categroy=toys", None, False),
    ("GET", "/v1/popular?n=5&user_id=U001", None, False),
    ("GET", "/v1/latest?n=5&category=toys", None, False),
    ("GET", "/v1/items/I003/similar?n=3&offset=1&category=toys&exclude=I008", None, False),
    ("POST", "/v1/impressions", {"user_id": "U006", "items": ["I001", "I002"], "id": "s1"}, False),
    ("GET", "/v1/users/U006/events?limit=2", None, False),
    ("DELETE", "/v1/users/U006/events?item_id=I001", None, False),
    ("GET", "/openapi.json", None, False),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--strategies", default="popular,content,ease,als")
    args = ap.parse_args()

    from recsys import create_app

    with tempfile.TemporaryDirectory() as tmp:
        events, items = write_shop(tmp)
        app = create_app(
            {
                "TESTING": True,
                "DATABASE_URL": f"sqlite:///{tmp}/recsys.db",
                "MODEL_DIR": f"{tmp}/models",
                "ADMIN_TOKEN": ADMIN,
                "PRELOAD_MODELS": True,
            }
        )
        from flask.cli import ScriptInfo

        from recsys.cli.main import main as recsys_cli

        runner = app.test_cli_runner()
        info = ScriptInfo(create_app=lambda: app)
        for cli in (
            ["db", "upgrade"],
            ["import", "csv", "--interactions", events, "--items", items],
            ["train", *args.strategies.split(","), "--quiet"],
        ):
            r = runner.invoke(recsys_cli, args=cli, obj=info)
            if r.exit_code != 0:
                raise SystemExit(f"recsys {' '.join(cli)} failed:\n{r.output}{r.exception!r}")
        client = app.test_client()
        out = []
        for method, path, body, admin in REQUESTS:
            headers = {"Authorization": f"Bearer {ADMIN}"} if admin else {}
            resp = client.open(path, method=method, json=body, headers=headers)
            try:
                payload = resp.get_json(silent=True)
            except Exception:  # noqa: BLE001
                payload = None
            if payload is None:
                payload = {"<text>": resp.get_data(as_text=True)[:200]}
            out.append(
                {
                    "request": f"{method} {path}",
                    "status": resp.status_code,
                    "headers": {
                        k.lower(): mask(v)
                        for k, v in resp.headers.items()
                        if k.lower() in KEPT_HEADERS and k.lower() not in VOLATILE_HEADERS
                    },
                    "body": mask(payload),
                }
            )
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
    print(f"{len(out)} answers -> {args.out}")


if __name__ == "__main__":
    main()
