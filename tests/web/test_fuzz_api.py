"""Fuzz every endpoint from the app's own OpenAPI document (schemathesis, through WSGI).

The app runs on the real PostgreSQL and Redis with a seeded store, trained popular + EASE
models and admin enabled, so admin endpoints are exercised too. For each operation schemathesis
generates valid (positive) and invalid (negative) requests; any 5xx fails the test, with a curl
line to reproduce each failing case. Bounded for CI: ``RECSYS_FUZZ_EXAMPLES`` per operation and
mode (default 20); deterministic unless ``RECSYS_FUZZ_RANDOM=1``. A wider exploration runs with
the CLI against a server: ``st run http://127.0.0.1:PORT/openapi.json -c not_a_server_error
-H "Authorization: Bearer $RECSYS_ADMIN_TOKEN"``.

The explicit cases below are what such runs found (each was a 500 before its fix); they stay
here because a bounded random run need not hit them again.
"""

from __future__ import annotations

import os

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.core.failures import FailureGroup  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402

from tests.servicekit import ADMIN_TOKEN  # noqa: E402

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
EXAMPLES = int(os.environ.get("RECSYS_FUZZ_EXAMPLES", "20"))
RANDOM = os.environ.get("RECSYS_FUZZ_RANDOM", "") == "1"


def _fuzz(app, operation, mode: GenerationMode) -> str | None:
    """Run one operation in one mode; the failing case as a curl line, or None."""
    failure: list[str] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=not RANDOM,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: report the first 5xx
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        response = case.call(app=app, headers=AUTH)
        try:
            case.validate_response(response, checks=[not_a_server_error], headers=AUTH)
        except (AssertionError, FailureGroup):  # FailureGroup is a BaseExceptionGroup
            failure.append(
                f"{response.status_code} {response.text[:200]!r}\n    "
                f"{case.as_curl_command(headers={'Authorization': '[token]'})}"
            )
            raise

    try:
        run()
    except (AssertionError, FailureGroup):
        pass
    except Unsatisfiable:  # nothing to make invalid (no parameters, no body): nothing to run
        pass
    except Exception as e:  # a schemathesis/hypothesis error is a test failure too
        if not failure:
            failure.append(f"{type(e).__name__}: {str(e)[:300]}")
    return failure[0] if failure else None


@pytest.mark.slow
def test_no_server_error_on_any_operation(served_app):
    schema = schemathesis.openapi.from_wsgi("/openapi.json", served_app)
    operations = [r.ok() for r in schema.get_all_operations()]
    labels = {op.label for op in operations}
    # The document covers the whole API, admin included (a route missing from it is unfuzzed).
    assert {"POST /v1/events", "PATCH /v1/admin/routing", "GET /v1/admin/audit"} <= labels
    failures = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            found = _fuzz(served_app, operation, mode)
            if found:
                failures.append(f"{operation.label} [{mode.value}]: {found}")
    assert not failures, "server errors:\n" + "\n".join(failures)


# -- hostile JSON values ---------------------------------------------------------------------
# Valid JSON that Python's parser or number conversions crash on rather than reject: each was
# a 500 somewhere (timestamps, floats, the parser itself) before recsys.web.limits and the schemas
# handled it. Random generation almost never produces them, so every body field of every
# operation gets each one in place of its value, and every body is also sent nested deeply.
HOSTILE = {
    "int-beyond-float": "1" + "0" * 400,
    "negative-int-beyond-float": "-1" + "0" * 400,
    "int-over-4300-digits": "9" * 5000,
    "float-overflow": "1e999",
    "deep-list": "[" * 100_000 + "]" * 100_000,
    "deep-object": '{"a":' * 100_000 + "1" + "}" * 100_000,
}
_SLOT = "\x01hostile\x01"


def _leaf_paths(value, path=()):
    """Paths to every value in a JSON document (containers included), root excluded."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return
    for k, v in items:
        yield (*path, k)
        yield from _leaf_paths(v, (*path, k))


def _with_hostile(body, path, raw: str) -> str:
    import copy
    import json

    doc = copy.deepcopy(body)
    target = doc
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = _SLOT
    return json.dumps(doc).replace(json.dumps(_SLOT), raw)


def _example(operation) -> tuple[str, object] | None:
    """One valid (schemathesis-generated) JSON body of ``operation`` and its URL, or None."""
    found: list = []

    @settings(
        max_examples=5,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
    def collect(case):
        if not found and isinstance(case.body, dict | list) and case.body:
            found.append((case.formatted_path, case.body))

    try:
        collect()
    except Unsatisfiable:
        pass
    return found[0] if found else None


@pytest.mark.slow
def test_hostile_json_values_are_4xx_on_every_operation(served_app):
    schema = schemathesis.openapi.from_wsgi("/openapi.json", served_app)
    client = served_app.test_client()
    failures, tried, operations = [], 0, set()
    for result in schema.get_all_operations():
        operation = result.ok()
        method = operation.method.upper()
        example = _example(operation) if method in ("POST", "PUT", "PATCH") else None
        if example is None:
            continue
        operations.add(operation.label)
        url, body = example
        texts = {f"{name} (whole body)": raw for name, raw in HOSTILE.items()}
        # The body as it is, and inside a list (POST /v1/events takes both).
        for shape, doc in (("", body), ("[0].", [body])):
            for path in _leaf_paths(doc):
                for name, raw in HOSTILE.items():
                    where = shape + ".".join(map(str, path))
                    texts[f"{name} at {where}"] = _with_hostile(doc, path, raw)
        for what, text in texts.items():
            tried += 1
            r = _raw(client, method, url, text)
            body_out = r.get_json(silent=True) or {}
            if not (
                400 <= r.status_code < 500 and {"code", "name", "description"} <= set(body_out)
            ):
                failures.append(f"{operation.label} {what}: {r.status_code} {r.data[:120]!r}")
    assert {"POST /v1/events", "PUT /v1/items/{item_id}"} <= operations and tried > 100
    assert not failures, "\n".join(failures[:30])


# -- what fuzzing found, pinned ------------------------------------------------------------
NUL = "a\u0000b"
SURROGATE = '"a\\ud800b"'  # raw JSON text: Python's json module accepts a lone surrogate


def _raw(client, method, url, text):
    return client.open(
        url, method=method, data=text, headers={**AUTH, "Content-Type": "application/json"}
    )


@pytest.mark.parametrize(
    "method,url",
    [
        ("GET", "/v1/users/%00/recommendations"),
        ("GET", "/v1/items/%00/similar"),
        ("PUT", "/v1/items/%00"),
        ("PUT", "/v1/users/%00"),
        ("GET", "/v1/admin/experiments/%00"),
        ("GET", "/v1/admin/experiments/%00/report"),
        ("POST", "/v1/admin/experiments/%00/stop"),
        ("GET", "/v1/admin/audit?action=%00"),
        ("GET", "/v1/admin/audit?offset=99999999999999999999"),
        ("GET", "/v1/popular?category=%00"),
        ("GET", "/v1/users/u1/recommendations?category=%00&exclude=%00"),
    ],
)
def test_nul_and_huge_numbers_in_urls_are_4xx(served_app, method, url):
    client = served_app.test_client()
    r = client.open(url, method=method, json={} if method == "PUT" else None, headers=AUTH)
    assert 400 <= r.status_code < 500, r.get_data(as_text=True)
    body = r.get_json()
    assert set(body) >= {"code", "name", "description"} and body["code"] == r.status_code


@pytest.mark.parametrize(
    "method,url,text,field",
    [
        ("POST", "/v1/events", '{"user_id": "%s", "item_id": "i1", "type": "view"}', "user_id"),
        ("POST", "/v1/events", '{"user_id": "u", "item_id": "%s", "type": "view"}', "item_id"),
        (
            "POST",
            "/v1/events",
            '{"user_id": "u", "item_id": "i1", "type": "view", "id": "%s"}',
            "id",
        ),
        ("PUT", "/v1/items/i1", '{"title": "%s"}', "title"),
        ("PUT", "/v1/items/i1", '{"description": "%s"}', "description"),
        ("PUT", "/v1/items/i1", '{"categories": ["%s"]}', "categories"),
        ("PUT", "/v1/items/i1", '{"attributes": {"k": "%s"}}', "attributes"),
        ("PUT", "/v1/users/u1", '{"attributes": {"k": ["%s"]}}', "attributes"),
        ("POST", "/v1/recommendations", '{"items": ["%s"]}', "items"),
    ],
)
@pytest.mark.parametrize("bad", ["\\u0000", "\\ud800"], ids=["nul", "lone-surrogate"])
def test_unstorable_text_is_422_and_stores_nothing(served_app, method, url, text, field, bad):
    from sqlalchemy import func, select

    from recsys.store import session_scope
    from recsys.store.models import Event

    client = served_app.test_client()
    with session_scope(served_app) as s:
        before = s.scalar(select(func.count()).select_from(Event))
    r = _raw(client, method, url, text % f"x{bad}y")
    assert r.status_code == 422, r.get_data(as_text=True)
    assert field in str(r.get_json()["detail"])
    with session_scope(served_app) as s:
        assert s.scalar(select(func.count()).select_from(Event)) == before


@pytest.mark.parametrize(
    "method,url,text",
    [
        ("PUT", "/v1/items/i1", '{"attributes": {"k": NaN}}'),
        ("PUT", "/v1/items/i1", '{"attributes": {"k": [1e400]}}'),
        ("PUT", "/v1/users/u1", '{"attributes": {"k": {"z": -Infinity}}}'),
        (
            "POST",
            "/v1/events",
            '{"user_id": "u", "item_id": "i1", "type": "rating", "value": 1e308}',
        ),
        ("PATCH", "/v1/admin/strategies", '{"ease": {"weight": 1e308}}'),
    ],
)
def test_non_finite_or_overflowing_numbers_are_422(served_app, method, url, text):
    r = _raw(served_app.test_client(), method, url, text)
    assert r.status_code == 422, r.get_data(as_text=True)


def test_experiment_report_is_valid_json_without_exposures(served_app):
    import json

    client = served_app.test_client()
    variants = [{"name": n, "weight": 0.5, "config": {}} for n in ("a", "b")]
    r = client.post(
        "/v1/admin/experiments", json={"name": "e1", "variants": variants}, headers=AUTH
    )
    assert r.status_code == 201, r.get_json()
    r = client.get("/v1/admin/experiments/e1/report", headers=AUTH)
    assert r.status_code == 200
    # Strict JSON (no NaN): what a browser or another language's parser will accept.
    json.loads(r.get_data(as_text=True), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    for hours in ("1e308", "nan", "-1", "0"):
        r = client.get(f"/v1/admin/experiments/e1/report?window_hours={hours}", headers=AUTH)
        assert r.status_code == 422 and r.get_json()["name"] == "Unprocessable Entity"


@pytest.mark.parametrize(
    "method,url,text,code",
    [
        # OverflowError in the timestamp field (an int beyond float range).
        (
            "POST",
            "/v1/events",
            '{"user_id": "u", "item_id": "i1", "type": "view", "timestamp": 1%s}' % ("0" * 400),
            422,
        ),
        # Python's 4,300-digit limit on int conversion, raised inside the JSON parser.
        (
            "POST",
            "/v1/events",
            '{"user_id": "u", "item_id": "i1", "type": "view", "value": %s}' % ("9" * 5000),
            400,
        ),
        ("PUT", "/v1/items/i1", '{"price": %s}' % ("9" * 5000), 400),
        # RecursionError in the JSON parser.
        ("POST", "/v1/events", "[" * 100_000 + "]" * 100_000, 400),
        ("POST", "/v1/recommendations", '{"items": ' + "[" * 100_000 + "]" * 100_000 + "}", 400),
    ],
    ids=["timestamp-overflow", "int-4301-digits", "price-4301-digits", "deep", "deep-inside"],
)
def test_the_three_json_500s_are_4xx(served_app, method, url, text, code):
    r = _raw(served_app.test_client(), method, url, text)
    assert r.status_code == code, r.get_data(as_text=True)[:300]
    assert {"code", "name", "description"} <= set(r.get_json())
