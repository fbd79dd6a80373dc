"""The one API-key check every service makes: the dependency on FastAPI routes and the same
check called directly, over a real server."""

import httpx
import pytest
from fastapi import FastAPI

from core.auth import ApiKey, ApiKeyAlways, ApiKeys, KeyRefusedError, install
from core.http import BackgroundServer, bind, json_errors


def _app(keys: tuple[str, ...]) -> FastAPI:
    app = FastAPI()
    install(app, ApiKeys(keys))
    json_errors(app, {KeyRefusedError: 401})

    @app.get("/read")
    def read(key: ApiKey) -> dict[str, str | None]:
        return {"key": key}

    @app.post("/change")
    def change(key: ApiKeyAlways) -> dict[str, str | None]:
        return {"key": key}

    return app


@pytest.fixture
def served():
    servers = []

    def start(keys: tuple[str, ...]) -> str:
        server = BackgroundServer(_app(keys), bind("127.0.0.1", 0, "auth test"), "auth").start()
        servers.append(server)
        return server.url

    yield start
    for server in servers:
        server.stop()


def test_a_keyed_service_answers_only_its_keys_and_names_the_scheme(served):
    url = served(("k1", "k2"))
    assert httpx.get(f"{url}/read", headers={"Authorization": "Bearer k2"}).json() == {"key": "k2"}
    # the scheme is case-insensitive (RFC 7235)
    assert httpx.get(f"{url}/read", headers={"Authorization": "bearer k1"}).json() == {"key": "k1"}
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic azI="}):
        answer = httpx.get(f"{url}/read", headers=headers)
        assert answer.status_code == 401, headers
        sent = headers.get("Authorization", "").startswith("Bearer")  # RFC 6750, section 3.1
        assert answer.headers["www-authenticate"] == ('Bearer error="invalid_token"' if sent
                                                      else "Bearer")
        assert "RETRAIN_API_KEYS" in answer.json()["error"]


def test_an_open_service_reads_freely_but_never_changes_without_a_key(served):
    url = served(())
    assert httpx.get(f"{url}/read").json() == {"key": None}
    refused = httpx.post(f"{url}/change", headers={"Authorization": "Bearer any"})
    assert refused.status_code == 403 and "none is configured" in refused.json()["error"]
    assert "www-authenticate" not in refused.headers


def test_the_check_itself_is_constant_shape_for_any_header_bytes():
    keys = ApiKeys(("sécret",))
    assert keys.identify("Bearer sécret") == "sécret"
    assert keys.identify("Bearer \udcff") is None  # undecodable header bytes: no match, no error
    assert keys.identify(None) is None
    with pytest.raises(KeyRefusedError) as refused:
        keys.check_header("Bearer wrong")
    assert refused.value.status == 401


def test_an_optional_key_is_none_without_one_and_refused_when_not_ours():
    """A service anyone may call (the model server): no header is anonymous, our key is
    named, anything else is refused rather than served as anonymous."""
    keys = ApiKeys(("k",))
    assert keys.optional(None) is None and keys.optional("") is None
    assert keys.optional("Bearer k") == "k" and keys.optional("BEARER k") == "k"
    for sent, challenge in (("Bearer x", 'Bearer error="invalid_token"'), ("Basic eA==", "Bearer"),
                            ("k", "Bearer")):
        with pytest.raises(KeyRefusedError) as refused:
            ApiKeys().optional(sent)  # keys configured or not
        assert refused.value.status == 401 and refused.value.headers == {
            "WWW-Authenticate": challenge}
