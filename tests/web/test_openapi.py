"""The OpenAPI document describes what the API really does: calls made through a client driven
by the document (paths, parameters, bodies) are validated against it, request and response,
with openapi-core; and /docs needs nothing from the network."""

from __future__ import annotations

import json
import re
from urllib.parse import urljoin

import pytest
from openapi_core import Config, OpenAPI
from openapi_core.testing import MockRequest, MockResponse

from tests.servicekit import ADMIN_TOKEN

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


class SpecClient:
    """A client generated from the document: it calls operations by (method, path template),
    refuses operations the document lacks, and validates each request and response."""

    def __init__(self, client, spec: dict):
        self.client = client
        self.spec = spec
        # The document's servers are relative to where it is served.
        config = Config(server_base_url="http://localhost/openapi.json")
        self.openapi = OpenAPI.from_dict(spec, config=config)

    def call(self, method: str, template: str, path_params=None, **kw):
        op = self.spec["paths"][template][method]  # KeyError: not in the document
        path = template
        for k, v in (path_params or {}).items():
            path = path.replace("{" + k + "}", v)
        assert "{" not in path
        r = getattr(self.client, method)(path, **kw)
        if "json" in kw:
            data, ctype = json.dumps(kw["json"]).encode(), "application/json"
        else:
            data, ctype = kw.get("data", "").encode(), kw.get("content_type", "application/json")
        req = MockRequest(
            "http://localhost",
            method,
            path,
            args={k: str(v) for k, v in kw.get("query_string", {}).items()},
            headers=kw.get("headers", {}),
            data=data,
            content_type=ctype,
        )
        if r.status_code < 400:  # the error calls send invalid requests on purpose
            self.openapi.validate_request(req)
        resp = MockResponse(r.data, r.status_code, dict(r.headers), r.mimetype)
        self.openapi.validate_response(req, resp)
        assert str(r.status_code) in op["responses"], (method, template, r.status_code)
        return r


@pytest.fixture
def api(served_app):
    client = served_app.test_client()
    return SpecClient(client, client.get("/openapi.json").get_json())


AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def test_document_is_valid_and_complete(api):
    from openapi_spec_validator import validate

    spec = api.spec
    validate(spec)
    schemes = spec["components"]["securitySchemes"]
    assert schemes["AdminToken"]["scheme"] == "bearer"
    assert schemes["ApiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert [t["name"] for t in spec["tags"]][:3] == ["Recommendations", "Catalogue", "Events"]
    error = spec["components"]["schemas"]["ErrorOut"]
    assert {"code", "name", "description", "detail"} <= set(error["properties"])
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for status, resp in op["responses"].items():
                schema = resp.get("content", {}).get("application/json", {}).get("schema")
                if path.startswith("/v1/"):
                    assert schema, (method, path, status)  # typed, not {}
                if status.startswith("4"):
                    assert schema == {"$ref": "#/components/schemas/ErrorOut"}
            if path.startswith("/v1/admin"):
                assert op["security"] == [{"AdminToken": []}]
    rec = spec["paths"]["/v1/users/{user_id}/recommendations"]["get"]
    headers = {p["name"] for p in rec["parameters"] if p["in"] == "header"}
    assert {"X-Priority", "X-Request-ID"} <= headers
    body = spec["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]
    assert [s.get("type") for s in body["schema"]["oneOf"]] == [None, "array"]


def test_calls_match_the_document(api):
    ev = {"user_id": "u1", "item_id": "i2", "type": "view", "id": "doc-1"}
    api.call("post", "/v1/events", json=ev)
    api.call("post", "/v1/events", json=[{**ev, "id": "doc-2"}, {**ev, "id": "doc-3"}])
    api.call("post", "/v1/events", json=[{**ev, "type": "nope"}])  # 422, ErrorOut
    api.call("post", "/v1/events", data="{,", content_type="application/json")  # 400
    api.call(
        "get",
        "/v1/users/{user_id}/recommendations",
        {"user_id": "u6"},
        query_string={"n": 3, "explain": "true", "fields": "title,categories"},
        headers={"X-Priority": "high", "X-Request-ID": "abc"},
    )
    api.call("get", "/v1/users/{user_id}/recommendations", {"user_id": "u6"})  # cached
    api.call("post", "/v1/recommendations", json={"items": ["i0"], "n": 2})
    api.call("get", "/v1/items/{item_id}/similar", {"item_id": "i1"}, query_string={"n": 2})
    api.call("get", "/v1/items/{item_id}/similar", {"item_id": "nope"})  # 404
    api.call("get", "/v1/popular", query_string={"n": 2, "fields": "price"})
    api.call("put", "/v1/items/{item_id}", {"item_id": "new"}, json={"title": "New", "price": 1})
    api.call("get", "/v1/items/{item_id}", {"item_id": "new"})
    api.call("get", "/v1/items", query_string={"limit": 2})
    api.call("delete", "/v1/items/{item_id}", {"item_id": "new"})
    api.call("put", "/v1/users/{user_id}", {"user_id": "z"}, json={"attributes": {"a": 1}})
    api.call("get", "/v1/users/{user_id}", {"user_id": "z"})
    api.call("get", "/v1/users", query_string={"limit": 2})
    api.call("delete", "/v1/users/{user_id}", {"user_id": "z"})
    api.call("get", "/v1/users/{user_id}/experiments", {"user_id": "u6"})
    api.call("get", "/healthz")
    api.call("get", "/readyz")
    api.call("get", "/v1/popular", query_string={"n": 2, "catgory": "x"})  # 422
    api.call("get", "/v1/popular", query_string={"n": 2, "user_id": "u1"})
    api.call("get", "/v1/latest", query_string={"n": 2, "category": "books"})
    api.call(
        "get",
        "/v1/items/{item_id}/similar",
        {"item_id": "i1"},
        query_string={"n": 2, "offset": 1, "category": "books", "exclude": "i0"},
    )
    shown = {"user_id": "u1", "items": ["i1", "i2"], "context": "home", "id": "doc-l1"}
    api.call("post", "/v1/impressions", json=shown)
    api.call("post", "/v1/impressions", json=[shown])  # 200: duplicates
    page = api.call(
        "get", "/v1/users/{user_id}/events", {"user_id": "u1"}, query_string={"limit": 1}
    ).get_json()
    event = str(page["events"][0]["event_id"])
    api.call(
        "delete", "/v1/users/{user_id}/events/{event_id}", {"user_id": "u1", "event_id": event}
    )
    api.call(
        "delete", "/v1/users/{user_id}/events", {"user_id": "u1"}, query_string={"item_id": "i2"}
    )
    api.call("get", "/v1/users/{user_id}/events", {"user_id": "nobody"})  # 404
    api.call("get", "/v1/users/{user_id}/neighbors", {"user_id": "u1"}, query_string={"n": 3})


def test_admin_calls_match_the_document(api, served_app):
    api.call("get", "/v1/admin/strategies", headers=AUTH)
    api.call("patch", "/v1/admin/strategies", headers=AUTH, json={"ease": {"weight": 0.5}})
    api.call("get", "/v1/admin/routing", headers=AUTH)
    api.call("patch", "/v1/admin/routing", headers=AUTH, json={"cold_threshold": 4})
    api.call("get", "/v1/admin/audit", headers=AUTH, query_string={"limit": 5})
    api.call("get", "/v1/admin/models", headers=AUTH)
    version = served_app.extensions["recsys.model_versions"]["ease"]
    api.call(
        "post",
        "/v1/admin/models/{strategy}/activate",
        {"strategy": "ease"},
        headers=AUTH,
        json={"version": version},
    )
    api.call(
        "post", "/v1/admin/models/{strategy}/load", {"strategy": "ease"}, headers=AUTH, json={}
    )
    api.call("get", "/v1/admin/experiments", headers=AUTH)
    api.call("get", "/v1/admin/strategies")  # 401, ErrorOut


def test_docs_page_loads_only_local_assets(served_app):
    client = served_app.test_client()
    html = client.get("/docs").get_data(as_text=True)
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs and not [u for u in refs if "://" in u or u.startswith("//")]
    for url in refs:
        # Relative to /docs, so that a path prefix added by a proxy is kept.
        assert not url.startswith("/"), url
        assert client.get(urljoin("/docs", url)).status_code == 200, url


def test_every_operation_has_a_stable_unique_operation_id(api):
    from recsys.web.openapi import OPERATION_IDS

    ids = {}
    for path, ops in api.spec["paths"].items():
        for method, op in ops.items():
            assert op.get("operationId"), (method, path)
            assert op["operationId"] == OPERATION_IDS[(path, method)]
            assert ids.setdefault(op["operationId"], (path, method)) == (path, method)
    # The table names no operation the document lacks (a renamed path would keep a dead id).
    assert set(OPERATION_IDS.values()) == set(ids)


def test_document_is_the_same_whatever_the_host_or_prefix(served_app):
    """Relative servers; no request header changes what another client is served."""
    client = served_app.test_client()
    first = client.get(
        "/openapi.json",
        headers={"Host": "recs.shop.example", "X-Forwarded-Prefix": "/evil"},
        base_url="http://recs.shop.example/",
    ).get_json()
    assert first["servers"] == [{"url": ".", "description": "where this document is served"}]
    assert client.get("/openapi.json").get_json() == first
    html = client.get("/docs", base_url="http://127.0.0.1:8000/").get_data(as_text=True)
    assert "recs.shop.example" not in html and "evil" not in html
