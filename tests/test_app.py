from __future__ import annotations


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.get_json() == {"status": "ok"}


def test_unknown_route_is_json_404(client):
    r = client.get("/no/such/thing")
    assert r.status_code == 404
    body = r.get_json()
    assert body["code"] == 404 and body["name"] == "Not Found" and body["description"]


def test_openapi_document(client):
    r = client.get("/openapi.json")
    assert r.status_code == 200
    assert "/healthz" in r.get_json()["paths"]


def test_env_prefix_config(monkeypatch, tmp_path):
    from recsys import create_app

    monkeypatch.setenv("RECSYS_CACHE_TTL", "42")
    monkeypatch.setenv("RECSYS_DATABASE_URL", f"sqlite:///{tmp_path / 'x.db'}")
    app = create_app()
    assert app.config["CACHE_TTL"] == 42
    assert app.config["DATABASE_URL"].endswith("x.db")
