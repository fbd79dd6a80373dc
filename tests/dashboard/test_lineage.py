"""The lineage in the dashboard: ``GET /api/lineage/<version>`` and its page, the links to it
from the served model, the versions and the decision rows; the decision rows' figures and
rules; the run page's validation report, and a blocked run naming each check that blocked it.
On a real history (the watcher, runner and selector of ``tests/workflows/test_lineage.py``)
read by the real app in process over a real Redis."""

import json

import pytest
from fastapi.testclient import TestClient

from dashboard.app import create_app
from dataset.seed import write_png_increment
from tests.workflows.test_lineage import History, leak
from workflows.lineage import KEYS, lineage

pytestmark = [pytest.mark.integration, pytest.mark.slow]
KEY = "lineage-test-key-41b7"


@pytest.fixture(scope="module")
def history(redis_handle, tmp_path_factory, standin_trainer):
    """Version 1, version 2 after a PNG increment, then an increment that copies the test
    split into the training data: the data gate blocks that run before any training."""
    redis_handle.client.flushdb()
    h = History(redis_handle, tmp_path_factory.mktemp("dashboard-lineage"))
    h.first = h.change(steps_per_epoch=3)
    write_png_increment(h.data, "b1", 60, seed=7)
    h.second = h.change(steps_per_epoch=8, warm_start=True)
    leak(h.data)
    h.blocked = h.change(status="blocked", validation="block")
    h.ui = TestClient(create_app(h.client, h.scope, api_keys=(KEY,)))
    return h


def test_the_api_answers_a_versions_lineage(history):
    answer = history.ui.get("/api/lineage/2")
    assert answer.status_code == 200
    found = answer.json()
    assert tuple(found) == KEYS and found["version"] == 2
    assert found == json.loads(json.dumps(lineage(history.client, history.scope, 2)))


def test_an_unknown_version_is_a_404_as_json_and_as_a_page(history):
    missing = history.ui.get("/api/lineage/99")
    assert missing.status_code == 404
    assert missing.json()["error"].startswith("no version 99 in the champion records")
    page = history.ui.get("/lineage/99")
    assert page.status_code == 404 and "no version 99" in page.text and "<h1>not here" in page.text
    assert history.ui.get("/api/lineage/-1").json()["error"].startswith("no version -1")
    assert history.ui.get("/api/lineage/two").status_code == 422


def test_reading_a_lineage_needs_the_key_every_read_needs(history):
    keyed = TestClient(create_app(history.client, history.scope, api_keys=(KEY,),
                                  require_key=True))
    assert keyed.get("/api/lineage/2").status_code == 401
    assert keyed.get("/lineage/2").status_code == 401
    answer = keyed.get("/api/lineage/2", headers={"Authorization": f"Bearer {KEY}"})
    assert answer.status_code == 200 and answer.json()["version"] == 2


def test_the_lineage_page_shows_each_link(history):
    event, summary = history.second
    page = history.ui.get("/lineage/2").text
    assert "<span id=lineage-version>2</span> · served now</h1>" in page
    for section in ("lineage-decision", "lineage-model", "lineage-training", "lineage-dataset",
                    "validation", "lineage-run", "lineage-events"):
        assert f"id={section}>" in page, section
    assert "class=figures" in page and page.count("<li class=passed>") >= 3  # every rule
    assert "from version <a class=lineage href='/lineage/1'>1</a>" in page  # the warm start
    assert "increments/b1" in page and "the trained model&#x27;s files" in page
    assert f"folder {history.data.resolve()}" in page and event.id in page
    assert f"href='/runs/{summary['run_id']}'" in page


def test_the_served_model_the_versions_and_the_decisions_link_to_their_lineage(history):
    models = history.ui.get("/models").text
    assert "href='/lineage/2'>why is it served?</a>" in models  # the champion card
    assert "<a class=lineage href='/lineage/1'>1</a>" in models  # the versions table
    assert "<details id='figures-" in models and "✓ better" in models  # folded figures
    run = history.ui.get(f"/runs/{history.second[1]['run_id']}").text
    assert "<a class=lineage href='/lineage/2'>2</a>" in run  # the decision row
    assert "<tr class=figures-row>" in run and "<th>trouser</th>" in run  # per class, open
    assert "id=validation><h2>validation: <span class='tag pass'>pass</span>" in run or \
        "id=validation><h2>validation: <span class='tag warn'>warn</span>" in run


def test_a_blocked_run_names_every_check_that_blocked_it(history):
    _, summary = history.blocked
    failed = [c["name"] for c in summary["validation"]["checks"] if c["status"] == "block"]
    assert "leakage" in failed
    page = history.ui.get(f"/runs/{summary['run_id']}").text
    assert "<span class='tag blocked'>blocked</span>" in page
    blocked = page.split("<p class=error id=blocked>", 1)[1].split("</p>", 1)[0]
    assert f"{len(failed)} failed check(s)" in blocked
    assert all(f"<b>{name}</b>" in blocked for name in failed)



def test_the_guards_outcome_and_the_runs_covered_on_the_page_and_in_the_decision_rows(r):
    from tests.workflows.test_lineage import guarded_history

    guarded_history(r, "guarded")
    ui = TestClient(create_app(r, "guarded"))
    assert ui.get("/api/lineage/2").json()["guard"]["state"] == "settled"
    settled = ui.get("/lineage/2").text
    assert "<section class=card id=lineage-guard>" in settled
    assert "<span id=guard-state><span class='tag settled'>settled</span></span>" in settled
    assert "settled after 500 answers, 1 errors: every rule passed" in settled
    assert "<td>window</td><td>2</td><td>500</td><td>1</td><td>0.20%</td><td>6.0 ms</td>" in settled
    covered = ui.get("/lineage/3").text
    assert "replaced by version 4 before its window ended, never settled" in covered
    assert "<h3 id=covers>the coalesced runs its data covers</h3>" in covered
    assert "<a href='/runs/run-c1'>run-c1</a>" in covered and "<code>ev-2</code>" in covered
    assert "<span class='tag watching'>watching</span>" in ui.get("/lineage/4").text
    assert "was not watched by the live guard" in ui.get("/lineage/1").text
    rows = ui.get("/models").text  # each promotion's row says what the guard made of it
    assert ("live guard: <span class='tag settled'>settled</span> settled after 500 answers, "
            "1 errors, against version 1") in rows
    assert "live guard: <span class='tag superseded'>superseded</span>" in rows
    decisions = ui.get("/api/models").json()["decisions"]
    assert [d.get("guard", {}).get("state") for d in decisions] == [
        None, "settled", "superseded", "watching"]
