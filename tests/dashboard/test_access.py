"""Who may read and change what on the dashboard, and how a refusal is answered: JSON for the
API, a page (the login form) for a person. A real Redis, the app in process; no stack."""

import pytest
from fastapi.testclient import TestClient

from dashboard.app import create_app

pytestmark = pytest.mark.integration
KEY = "access-test-key-9c1d"
BEARER = {"Authorization": f"Bearer {KEY}"}


def _app(r, tmp_path, **options):
    return TestClient(create_app(r, str(tmp_path / "models"), **options))


def test_reading_is_open_unless_a_key_is_required(r, tmp_path):
    open_ = _app(r, tmp_path, api_keys=(KEY,))
    assert open_.get("/api/overview").status_code == 200
    assert open_.get("/").status_code == 200
    assert open_.get("/api/overview", headers={"Authorization": "Bearer wrong"}).status_code == 200


def test_changing_always_needs_a_bearer_key(r, tmp_path):
    keyed = _app(r, tmp_path, api_keys=(KEY,))
    missing = keyed.post("/api/rollback")
    assert missing.status_code == 401 and "needs an API key" in missing.json()["error"]
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = keyed.post("/api/rollback", headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 401 and "not one of RETRAIN_API_KEYS" in wrong.json()["error"]
    offered = keyed.post("/api/rollback", headers=BEARER)  # past the key: not offered here
    assert offered.status_code == 501 and "retrain select rollback" in offered.json()["error"]
    unkeyed = _app(r, tmp_path)
    refused = unkeyed.post("/api/dead-letters/replay", json={"id": "0-1"}, headers=BEARER)
    assert refused.status_code == 403 and "none is configured" in refused.json()["error"]


def test_a_required_key_is_asked_for_by_the_api_as_json_and_by_a_page_with_the_login_form(
        r, tmp_path):
    locked = _app(r, tmp_path, api_keys=(KEY,), require_key=True)
    api = locked.get("/api/runs")
    assert api.status_code == 401 and api.headers["content-type"] == "application/json"
    assert "needs an API key" in api.json()["error"]
    page = locked.get("/models")
    assert page.status_code == 401 and page.headers["content-type"].startswith("text/html")
    assert "<form method=post action=/login>" in page.text
    assert locked.get("/api/runs", headers=BEARER).status_code == 200
    assert locked.get("/runs/nope", headers=BEARER).status_code == 404  # the key let it through
    no_keys = _app(r, tmp_path, require_key=True)
    assert no_keys.get("/api/overview").status_code == 403
    assert "<form method=post action=/login>" in no_keys.get("/").text


def test_the_login_cookie_reads_but_never_changes(r, tmp_path):
    locked = _app(r, tmp_path, api_keys=(KEY,), require_key=True)
    wrong = locked.post("/login", data={"key": "wrong"})
    assert wrong.status_code == 401 and "<form method=post action=/login>" in wrong.text
    assert "retrain_key" not in locked.cookies
    entered = locked.post("/login", data={"key": KEY}, follow_redirects=False)
    assert entered.status_code == 303 and entered.headers["location"] == "/"
    assert "httponly" in entered.headers["set-cookie"].lower()
    assert locked.get("/api/events").status_code == 200 and locked.get("/try").status_code == 200
    assert locked.post("/api/rollback").status_code == 401
    assert locked.post("/api/predict", json={}).status_code == 501  # read: the cookie will do


def test_what_is_not_there_is_a_404_page_or_json_not_a_login(r, tmp_path):
    app = _app(r, tmp_path, api_keys=(KEY,))
    page = app.get("/runs/nope")
    assert page.status_code == 404 and "no run &#x27;nope&#x27;" in page.text
    assert "/login" not in page.text
    api = app.get("/api/runs/nope")
    assert api.status_code == 404 and api.json() == {
        "error": "no run 'nope' (runs are kept 30 days)"}


def test_a_body_too_large_or_not_json_is_refused_before_anything_changes(r, tmp_path):
    app = _app(r, tmp_path, api_keys=(KEY,))
    assert app.post("/api/dead-letters/replay", content=b"{not json",
                    headers=BEARER).status_code == 400
    assert app.post("/api/dead-letters/replay", content=b"x" * 10_000,
                    headers=BEARER).status_code == 413
    assert app.post("/login", content=b"key=" + b"x" * 10_000).status_code == 413
