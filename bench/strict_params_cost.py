"""What the strict query-parameter check (``recsys.web.params.check_request``) costs a request
that goes through Flask: microseconds per call, for a plain query and for the view's whole
answer with the check on and off (``STRICT_PARAMS``). The WSGI fast path never runs the check
(a query with a key it does not know is handed to Flask), so its requests pay nothing.

    .venv/bin/python bench/strict_params_cost.py --rounds 5 --calls 2000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recsys.app import create_app  # noqa: E402
from recsys.config import update_config  # noqa: E402
from recsys.web.params import check_request  # noqa: E402

URL = "/v1/popular?n=5&offset=0&category=kitchen&fields=title"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args()
    folder = tempfile.mkdtemp(prefix="strict-")
    app = create_app(
        {
            "TESTING": True,
            "DATABASE_URL": f"sqlite:///{folder}/r.db",
            "MODEL_DIR": f"{folder}/models",
            "PRELOAD_MODELS": False,
        }
    )
    from recsys.store import get_engine
    from recsys.store.models import Base

    Base.metadata.create_all(get_engine(app))
    client = app.test_client()
    assert client.get(URL).status_code == 200
    check, whole = {True: [], False: []}, {True: [], False: []}
    for _ in range(args.rounds):
        for strict in (True, False):
            update_config(app, STRICT_PARAMS=strict)
            with app.test_request_context(URL):
                from flask import request

                request.url_rule, request.view_args = app.url_map.bind("localhost").match(
                    "/v1/popular", return_rule=True
                )
                t0 = time.perf_counter()
                for _ in range(args.calls):
                    check_request()
                check[strict].append((time.perf_counter() - t0) / args.calls * 1e6)
            t0 = time.perf_counter()
            for _ in range(args.calls // 10):
                client.get(URL)
            whole[strict].append((time.perf_counter() - t0) / (args.calls // 10) * 1e6)
    print(f"load {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores; medians of {args.rounds} rounds")
    for strict in (True, False):
        each = statistics.median(check[strict])
        print(
            f"STRICT_PARAMS={str(strict).lower():<5}  check_request {each:6.2f} us"
            f"   GET {URL} {statistics.median(whole[strict]):8.1f} us"
        )


if __name__ == "__main__":
    main()
