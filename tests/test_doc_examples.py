"""Every ``curl`` example of the README and docs/ runs against a live service like the one
``make run`` serves (tests/retailkit.py: the bundled Online Retail data's first lines, which
hold every customer and item the examples name, real models and the tuned profile's route), on
real PostgreSQL and Redis over real HTTP.

How examples are found and marked: ``scripts/doc_examples.py``. They run in reading order on one
store (a document's examples may build on each other: an item retired, a key created).
An example must answer the status its comment names (``# 404 ...``), else a 2xx or 304; a
```` ```json ```` answer shown after it must have the keys the service answers, and a route of
the same kind (a profile's ``h...`` names, not ``cold``/``warm``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.retailkit import LiveServer, retail_app
from tests.servicekit import ADMIN_TOKEN

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import doc_examples  # noqa: E402

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

EXAMPLES = doc_examples.curl_examples(ROOT)
LAST = ("docs/operator.md",)  # stores an API key: every later write would need one


def _order(doc: str) -> tuple[int, str]:
    return (0 if doc == "README.md" else 2 if doc in LAST else 1, doc)


HOST = re.compile(r"\b(?:localhost|127\.0\.0\.1):8000\b")
DROP_FLAGS = {"-s", "-sS", "-S", "-i", "-v", "--silent", "--include"}
DROP_WITH_VALUE = {"-o", "-D", "--output", "--dump-header", "-w", "--write-out"}


@pytest.fixture
def service(make_app, redis_url, redis_prefix, tmp_path):
    """``host:port`` of a live service on the bundled data (tests/retailkit.py)."""
    server = LiveServer(retail_app(make_app, redis_url, redis_prefix, tmp_path))
    yield f"127.0.0.1:{server.port}"
    server.close()


def _argv(ex: doc_examples.CurlExample, host: str, out: Path) -> list[str]:
    """The example's curl arguments against ``host``, with the answer written to ``out``."""
    args = ex.args[: ex.args.index("|")] if "|" in ex.args else list(ex.args)
    argv, skip = [], False
    for a in args[1:]:
        if skip:
            skip = False
        elif a in DROP_WITH_VALUE:
            skip = True
        elif a not in DROP_FLAGS:
            a = a.replace("$RECSYS_ADMIN_TOKEN", ADMIN_TOKEN)
            argv.append(f"Authorization: Bearer {ADMIN_TOKEN}" if a == "$H" else HOST.sub(host, a))
    return ["curl", "-sS", "--max-time", "60", "-o", str(out), "-w", "%{http_code}", *argv]


def _route_kind(route: str) -> str:
    return "profile" if re.fullmatch(r"h\d[\w+-]*", route or "") else route


def _check_shown(ex: doc_examples.CurlExample, body: bytes) -> None:
    try:
        shown = json.loads(ex.shows)
    except json.JSONDecodeError as e:
        raise AssertionError(f"{ex.name}: the answer shown after it is not JSON: {e}") from e
    got = json.loads(body)
    assert set(shown) <= set(got), f"{ex.name}: shown keys {set(shown) - set(got)} not served"
    if "route" in shown:
        assert _route_kind(shown["route"]) == _route_kind(got["route"]), (
            f"{ex.name}: shows route {shown['route']!r}, the service answers {got['route']!r}"
        )
    if shown.get("items") and got.get("items"):
        missing = set(shown["items"][0]) - set(got["items"][0])
        assert not missing, f"{ex.name}: shown item fields {missing} not served"


def _run(ex: doc_examples.CurlExample, host: str, out: Path) -> str | None:
    """Run one example; what is wrong with its answer, or None."""
    proc = subprocess.run(_argv(ex, host, out), capture_output=True, text=True, timeout=90)
    if proc.returncode != 0:
        return f"{ex.name}: curl failed: {proc.stderr.strip()}"
    status = int(proc.stdout)
    body = out.read_bytes() if out.exists() else b""
    if ex.status is not None and status != ex.status:
        return f"{ex.name}: {status} (documented {ex.status}): {body[:300]!r}"
    if ex.status is None and not (200 <= status < 300 or status == 304):
        return f"{ex.name}: {status}: {body[:300]!r}"
    if ex.shows is not None:
        try:
            _check_shown(ex, body)
        except AssertionError as e:
            return str(e)
    return None


@pytest.mark.skipif(not shutil.which("curl"), reason="curl is not installed")
def test_every_curl_example_answers_as_documented(service, tmp_path):
    """One service for all documents, in reading order: the README's tour first, the operator guide
    (which stores an API key, after which writes need one) last."""
    wrong = []
    for k, ex in enumerate(sorted(EXAMPLES, key=lambda e: _order(e.doc))):
        problem = _run(ex, service, tmp_path / f"answer-{k}")
        if problem:
            wrong.append(problem)
    assert not wrong, f"{len(wrong)} of {len(EXAMPLES)} examples:\n" + "\n".join(wrong)


def test_examples_are_found():
    """The parser finds the README's tour and the storefront guide's calls."""
    names = {(ex.doc, ex.args[1]) for ex in EXAMPLES}
    assert any(doc == "README.md" for doc, _ in names)
    assert sum(ex.doc == "docs/storefront.md" for ex in EXAMPLES) >= 10
    assert all(ex.args[0] == "curl" for ex in EXAMPLES)
