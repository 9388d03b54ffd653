"""Every ``curl`` example of the README and docs/ runs against a live service like the one
``make run`` serves (tests/retailkit.py: the bundled Online Retail data's first lines, which
hold every customer and item the examples name, real models and the tuned profile's route), on
real PostgreSQL and Redis over real HTTP.

How examples are found and marked: ``scripts/doc_examples.py``. Each document runs in order on
a fresh store (a document's examples may build on each other: a key created, an item retired).
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
DOCS = sorted({ex.doc for ex in EXAMPLES}, key=lambda d: (d != "README.md", d))
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
        pytest.fail(f"{ex.name}: the answer shown after the example is not JSON: {e}")
    got = json.loads(body)
    assert set(shown) <= set(got), f"{ex.name}: shown keys {set(shown) - set(got)} not served"
    if "route" in shown:
        assert _route_kind(shown["route"]) == _route_kind(got["route"]), (
            f"{ex.name}: shows route {shown['route']!r}, the service answers {got['route']!r}"
        )
    if shown.get("items") and got.get("items"):
        missing = set(shown["items"][0]) - set(got["items"][0])
        assert not missing, f"{ex.name}: shown item fields {missing} not served"


@pytest.mark.skipif(not shutil.which("curl"), reason="curl is not installed")
@pytest.mark.parametrize("doc", DOCS)
def test_every_curl_example_answers_as_documented(doc, service, tmp_path):
    ran = []
    for k, ex in enumerate(e for e in EXAMPLES if e.doc == doc):
        out = tmp_path / f"answer-{k}"
        proc = subprocess.run(_argv(ex, service, out), capture_output=True, text=True, timeout=90)
        assert proc.returncode == 0, f"{ex.name}: curl failed: {proc.stderr}"
        status = int(proc.stdout)
        body = out.read_bytes() if out.exists() else b""
        if ex.status is not None:
            assert status == ex.status, f"{ex.name}: {status} (documented {ex.status}): {body!r}"
        else:
            assert 200 <= status < 300 or status == 304, f"{ex.name}: {status}: {body!r}"
        if ex.shows is not None:
            _check_shown(ex, body)
        ran.append(ex.name)
    assert ran, f"{doc} has no curl example"


def test_examples_are_found():
    """The parser finds the README's tour and the storefront guide's calls."""
    names = {(ex.doc, ex.args[1]) for ex in EXAMPLES}
    assert any(doc == "README.md" for doc, _ in names)
    assert sum(ex.doc == "docs/storefront.md" for ex in EXAMPLES) >= 10
    assert all(ex.args[0] == "curl" for ex in EXAMPLES)
