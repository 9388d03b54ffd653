"""A live service like the one ``make run`` serves, small enough for a test: the bundled Online
Retail file's first lines (every customer and item the docs' examples name), real popular,
ALS and EASE models, and an active serving profile like the one ``make run`` tunes, on real
PostgreSQL and Redis, over real HTTP (werkzeug, threaded, on a free port of 127.0.0.1).

Used by tests/test_doc_examples.py (the docs' curl examples) and
tests/web/test_storefront_client.py (the TypeScript client's storefront page in Chromium).
"""

from __future__ import annotations

import gzip
import itertools
import threading
from pathlib import Path

from werkzeug.serving import make_server

from tests.servicekit import ADMIN_TOKEN

ROOT = Path(__file__).resolve().parent.parent
FIRST_LINES = 20_000  # of data/online_retail.csv.gz: December 2010, 17850 and 85123A included
STRATEGIES = ("popular", "als", "ease")
# The profile `make run` tuned on the bundled data (2026-12-07, 60 s budget): one route for
# every history length, a weighted blend; an empty history gets the strategies that can score
# one (popularity).
PROFILE_ROUTES = [
    {
        "name": "h0+",
        "max_history": None,
        "weights": {"als": 1.0, "ease": 1.0, "popular": 1.0},
        "blend": "weighted",
    },
]


def retail_app(make_app, redis_url: str, redis_prefix: str, tmp_path: Path, **config):
    """An app on the bundled data's first lines, trained, with a profile, models loaded."""
    from recsys.cli.main import main
    from recsys.models.profile import ServingProfile, activate_profile, save_profile
    from recsys.models.repository import get_repository
    from recsys.models.runtime import get_runtime

    app = make_app(
        REDIS_URL=redis_url,
        REDIS_PREFIX=redis_prefix,
        ADMIN_TOKEN=ADMIN_TOKEN,
        CONFIG_POLL_SECONDS=0.05,
        DEADLINE_MS=5000,
        **config,
    )
    csv = tmp_path / "retail.csv"
    with gzip.open(ROOT / "data" / "online_retail.csv.gz", "rt", encoding="utf-8") as src:
        csv.write_text("".join(itertools.islice(src, FIRST_LINES + 1)))
    runner = app.test_cli_runner()
    for args in (
        ["import", "online-retail", str(csv)],
        ["train", *STRATEGIES, "--holdout", "0", "--quiet"],
    ):
        r = runner.invoke(main, args=args)
        assert r.exit_code == 0, r.output
    repo = get_repository(app)
    with app.app_context():
        profile = ServingProfile(
            routes=PROFILE_ROUTES,
            params={},
            validation={"overall": {"ndcg@10": 0.0}},
            guard={"verdict": "passed", "reason": "test service"},
            models={s: repo.active_version(s) for s in STRATEGIES},
        )
        activate_profile(repo, save_profile(repo, profile))
    for name in STRATEGIES:
        assert get_runtime(app).get(name) is not None
    return app


class LiveServer:
    """``app`` served on a free port of 127.0.0.1 in a thread until ``close()``."""

    def __init__(self, app):
        self.httpd = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self.httpd.server_port
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.thread.join(10)
