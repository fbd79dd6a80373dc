"""The dashboard: its JSON API on a real stack, and its pages in Debian's headless Chromium
(driven through chromedriver's WebDriver API), checked for what a person would see.
Screenshots of each page are kept under test-artifacts/screenshots/."""

import io
import json
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image
from rich.console import Console

from core.settings import MODEL_NAME
from dataset.ingest import CODE_VERSION
from events import EventType, make_event
from events.payloads import IngestionSkipped, RunParameters
from events.sinks import HttpSink
from retrain.stack import LocalStack
from services.selector.backends import LocalBackend
from services.selector.champion import ChampionStore
from tests.conftest import images_array, wait_for, write_dataset

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
KEY = "dashboard-test-key-5f2a"
HOSTILE = "<script>alert('x')</script>"


@pytest.fixture(scope="module")
def stack(redis_handle, tmp_path_factory, standin_trainer):
    """A real stack after one real run (the watcher notices a dataset appear; a training by
    the test trainer; its promotion), an event from a hostile source, and a second champion so
    there is something to roll back to. One for the module: the API is read first, then the browser
    changes things (a rollback)."""
    from core.settings import Settings

    redis_handle.client.flushdb()
    tmp_path = tmp_path_factory.mktemp("dashboard")
    settings = Settings(home=tmp_path / "home", redis_url=redis_handle.url, serve_port=0,
                        grpc_port=0, ui_port=0, events_port=0, offline=True, watch_interval=0.1,
                        watch_settle=0.2, api_keys=(KEY,), _env_file=None)
    watched = tmp_path / "watched" / "fashion-mnist"
    params = RunParameters(models=("cnn",), steps_per_epoch=20, batch_size=32)  # 2 curve points
    with LocalStack(settings, data_root=watched, default_parameters=params,
                    console=Console(quiet=True)) as stack:
        watched.parent.mkdir(parents=True)
        write_dataset(tmp_path / "staging", train=600, test=200).rename(watched)
        wait_for(lambda: any(d["type"] == "model.promoted" for d in stack.champions.decisions()),
                 180)
        hostile = make_event(EventType.INGESTION_SKIPPED, IngestionSkipped(
            run_id="elsewhere", digest="d", dataset_uri="/x",
            reason="fetched https://bob:hunter2@git.example.com/data.git"), source=HOSTILE)
        HttpSink(stack.events_url, api_key=KEY).send(hostile)
        HttpSink(stack.events_url, api_key=KEY).send(hostile)  # again: a duplicate
        champion = stack.champions.get()
        backend = LocalBackend(settings.model_repo, MODEL_NAME)
        staged = backend.stage(champion.model_uri, backend.next_version())
        backend.publish(staged)
        ChampionStore(stack.redis.client, str(settings.model_repo.resolve())).replace(
            champion.generation, type(champion)(**{**champion.__dict__, "version": staged.version,
                                                   "model_uri": staged.location,
                                                   "generation": champion.generation + 1}))
        yield stack


def test_the_api_answers_from_redis_alone(stack):
    api = httpx.Client(base_url=stack.ui_url.rstrip("/"), timeout=30)
    overview = api.get("/api/overview").json()
    [run] = overview["runs"]["runs"]
    assert run["trigger"] == "watcher" and run["cache"] == "miss" and run["trained"] == ["cnn"]
    sources = {s["name"]: s for s in overview["sources"]}
    watched = sources[str(stack.data_root.resolve())]
    assert watched["changes"] == 1 and watched["digest"] == api.get(
        f"/api/runs/{run['run_id']}").json()["summary"]["digest"]
    [outbox] = [s for name, s in sources.items() if name.startswith("outbox stack-watcher:")]
    assert outbox["depth"] == 0  # delivered
    assert overview["champion"]["version"] == 2 and overview["replaced"]["version"] == 1
    detail = api.get(f"/api/runs/{run['run_id']}").json()
    assert [s["name"] for s in detail["summary"]["steps"]] == [
        "fingerprint", "check_cache", "ingest", "validate", "train:cnn"]
    assert [p["step"] for p in detail["curves"]["cnn"]["points"]] == [10, 20]
    assert detail["decisions"][0]["type"] == "model.promoted"
    assert api.get("/api/runs/nope").status_code == 404
    page = api.get("/api/runs", params={"limit": 1}).json()
    assert page["total"] == 1 and page["next"] is None
    events = [e for e in api.get("/api/events").json()["events"] if e["source"] == HOSTILE]
    assert [(e["type"], e.get("duplicate", False)) for e in events] == [
        ("ingestion.skipped", True), ("ingestion.skipped", False)]  # newest first
    assert events[0]["reason"] == "fetched https://bob:***@git.example.com/data.git"  # masked
    html = api.get("/events").text
    assert HOSTILE not in html and "&lt;script&gt;" in html  # escaped, never markup
    assert "hunter2" not in html and ">duplicate<" in html
    assert CODE_VERSION in api.get(f"/runs/{run['run_id']}").text  # the cache key's parts
    assert api.post("/api/rollback").status_code == 401
    assert api.post("/api/rollback", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert stack.champions.get().version == 2  # refused: nothing changed


def test_the_pages_in_a_real_browser(stack, tmp_path):
    from tests.dashboard.webdriver import Browser

    run_id = httpx.get(stack.ui_url + "api/runs").json()["runs"][0]["run_id"]
    browser = Browser(ARTIFACTS)
    try:
        browser.open(stack.ui_url)
        assert run_id in browser.wait_text("main", run_id)
        assert browser.text("#champion-version") == "2"
        assert "miss" in browser.text("main table")  # the run's cache decision
        assert str(stack.data_root.resolve()) in browser.text("main")  # the watched source
        browser.screenshot("overview")

        browser.open(f"{stack.ui_url}runs/{run_id}")
        assert browser.text("#run-id") == run_id
        assert "miss: no ingestion of content digest" in browser.text("#cache-decision")
        assert browser.count("svg.timeline rect") == 5  # fingerprint, check, ingest,
        # validate, train:cnn
        assert browser.count("svg.curve polyline") == 2  # loss and accuracy of cnn
        assert "pass" in browser.text("#validation") or "warn" in browser.text("#validation")
        assert "better" in browser.text(".figures .rules")  # the decision's rules, shown
        browser.screenshot("run")

        browser.open(stack.ui_url + "lineage/1")
        assert "model.promoted" in browser.wait_text("#lineage-decision", "model.promoted")
        assert str(stack.data_root.resolve()) in browser.text("#lineage-events")  # the folder
        browser.screenshot("lineage")

        browser.open(stack.ui_url + "models")
        assert browser.text("#champion-version") == "2"
        browser.click("main details summary")  # a decision's figures, unfolded
        browser.click("#rollback")
        assert "needs an API key" in browser.wait_text("#action-result", "API key")
        assert stack.champions.get().version == 2
        browser.type("#api-key", KEY)
        browser.click("#rollback")
        assert "Rolled back" in browser.wait_text("#action-result", "Rolled back")
        assert stack.champions.get().version == 3  # the previous champion, as a new version
        assert browser.wait_text("#champion-version", "3") == "3"  # live, without a reload
        assert browser.count("main details[open]") == 1  # still unfolded after the refresh
        browser.screenshot("models")

        browser.open(stack.ui_url + "events")
        sources = browser.wait_text("main", HOSTILE)
        assert HOSTILE in sources  # shown as text
        assert browser.count("main script") == 0  # and never run as markup
        browser.screenshot("events")

        png = tmp_path / "shirt.png"
        buffer = io.BytesIO()
        Image.fromarray(images_array(1)[0], "L").save(buffer, format="PNG")
        png.write_bytes(buffer.getvalue())
        browser.open(stack.ui_url + "try")
        browser.type("#image", str(png))
        browser.click("#predict")
        predicted = browser.wait_text("#predicted", "predicted")
        assert predicted.startswith("predicted ") and "by model version 3" in predicted
        assert browser.count("#prediction tr") == 10
        browser.screenshot("try-it")
        time.sleep(2.5)  # a live refresh or two, then the console is read
        assert browser.console_errors() == []
    finally:
        browser.close()


def test_dead_letters_are_replayed_with_a_key(stack):
    client = stack.redis.client
    overview = httpx.get(stack.ui_url + "api/overview").json()  # after the browser's rollback
    assert overview["champion"]["version"] == 3 and overview["since"] > time.time() - 300
    missing = httpx.get(stack.ui_url + "runs/nope")
    assert missing.status_code == 404 and "no run &#x27;nope&#x27;" in missing.text
    assert "/login" not in missing.text
    body = json.dumps({"type": "dev.retrain.dataset.updated", "id": "lost-1", "source": "w"})
    dead = client.xadd("retrain:outbox:ui-test:dead", {"event": body, "reason": "refused: 403"})
    api = httpx.Client(base_url=stack.ui_url.rstrip("/"), timeout=30)
    [letter] = api.get("/api/events").json()["dead_letters"]
    assert letter["event_id"] == "lost-1" and letter["origin"] == "retrain:outbox:ui-test"
    request = {"stream": letter["stream"], "id": letter["entry_id"]}
    assert api.post("/api/dead-letters/replay", json=request).status_code == 401
    done = api.post("/api/dead-letters/replay", json=request,
                    headers={"Authorization": f"Bearer {KEY}"})
    assert done.status_code == 200 and done.json()["replayed"] == [dead.decode()]
    assert client.xlen("retrain:outbox:ui-test") == 1 and api.get("/api/events").json()[
        "dead_letters"] == []
    bad = api.post("/api/dead-letters/replay", json={"id": "0-1"},
                   headers={"Authorization": f"Bearer {KEY}"})
    assert bad.status_code == 400 and "no dead letter 0-1" in bad.json()["error"]
    key = {"Authorization": f"Bearer {KEY}"}
    assert api.post("/api/dead-letters/replay", content=b"{not json", headers=key).status_code == 400
    assert api.post("/api/dead-letters/replay", content=b"x" * 10_000, headers=key).status_code == 413
    big = api.post("/api/predict", content=b"{" + b" " * (3 << 20), headers={
        "content-type": "application/json"})
    assert big.status_code == 413 and "exceeds the limit" in big.json()["error"]


def test_reading_can_require_a_key_and_the_page_asks_for_it(stack, tmp_path):
    from fastapi.testclient import TestClient

    from dashboard.app import create_app

    locked = TestClient(create_app(stack.redis.client, str(stack.settings.model_repo.resolve()),
                                   api_keys=(KEY,), require_key=True))
    assert locked.get("/api/overview").status_code == 401
    page = locked.get("/")
    assert page.status_code == 401 and "<form method=post action=/login>" in page.text
    assert locked.post("/login", data={"key": "wrong"}).status_code == 401
    entered = locked.post("/login", data={"key": KEY}, follow_redirects=False)
    assert entered.status_code == 303 and "httponly" in entered.headers["set-cookie"].lower()
    assert locked.get("/api/overview").status_code == 200  # the cookie now
    assert locked.get("/").status_code == 200
    assert locked.post("/api/rollback").status_code == 401  # changing still needs the header
    assert TestClient(locked.app).get("/api/overview", headers={
        "Authorization": f"Bearer {KEY}"}).status_code == 200
