"""The live guard on a real model server under ~100 requests/s, every class alike in the
traffic: a promoted model that answers errors is rolled back by the fast rule within seconds
with at most 1 % of a minute's requests failed, and refused when it comes again until
approved; one whose predicted classes shift is rolled back at its window's end; a good one
settles with nothing failed."""

import pytest

from events import EventType
from services.selector.guard import Window
from services.selector.guard_store import approve, guard_state
from tests.conftest import wait_for
from tests.services.selector.live_load import Load, Rig, altered, nan_weight, never, nudge, trained

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def rig(r, tmp_path, trained_models):
    rig = Rig(r, tmp_path / "repo", Window(requests=300, seconds=30))
    good = trained_models.copy("good", tmp_path / "runs" / "good").model_uri
    rig.table.scores.update({"good": 0.85, "nan": 0.9, "shifted": 0.9, "good-again": 0.9})
    assert rig.selector.handle(trained("run-1", good)).type is EventType.MODEL_PROMOTED
    wait_for(lambda: rig.app.state.holder.served_version == 1)
    load = Load(rig.server.url).start()
    wait_for(lambda: len(load.answers) >= 200)  # version 1's window: what the next is judged by
    yield rig, load, good
    load.stop()
    rig.close()


def test_a_model_answering_errors_is_rolled_back_at_once_and_refused_until_approved(rig, tmp_path):
    rig, load, good = rig
    nan = altered(good, tmp_path / "runs" / "nan", nan_weight)
    assert rig.selector.handle(trained("run-2", nan)).type is EventType.MODEL_PROMOTED
    wait_for(lambda: rig.rolled_back(), seconds=60)
    wait_for(lambda: rig.app.state.holder.served_version == 3)  # version 1's model again
    first = load.first_failure()
    rolled = rig.rolled_back()[0].data
    assert rolled.rule == "consecutive_errors" and rolled.version == 2
    failed = load.failed(since=first)
    rate = len(load.answers) / (load.answers[-1][0] - load.answers[0][0])
    assert failed <= 0.01 * rate * 60, (failed, rate)  # of the minute from the first failure
    wait_for(lambda: len(load.answers) > 0 and load.answers[-1][1] == 200)
    assert guard_state(rig.store.client, rig.store.scope, 2)["state"] == "rolledback"
    again = rig.selector.handle(trained("run-3", nan))  # the same files, from another run
    assert again.type is EventType.MODEL_REJECTED and "retrain approve --version 2" in again.data.reason
    approve(rig.store, 2, "user:test")
    judged = rig.selector.handle(trained("run-4", nan))  # judged by the gate again
    assert judged.type is EventType.MODEL_PROMOTED and "live guard" not in judged.data.reason


def test_shifted_classes_roll_back_at_the_windows_end_and_a_good_model_settles(rig, tmp_path):
    rig, load, good = rig
    shifted = altered(good, tmp_path / "runs" / "shifted", never(4, 6))
    assert rig.selector.handle(trained("run-2", shifted)).type is EventType.MODEL_PROMOTED
    wait_for(lambda: (guard_state(rig.store.client, rig.store.scope, 2) or {}).get("state")
             not in (None, "watching"), seconds=60)
    assert rig.rolled_back(), guard_state(rig.store.client, rig.store.scope, 2)
    rolled = rig.rolled_back()[0].data
    assert rolled.rule == "class_distribution" and rolled.window.classes[4] == 0
    assert rolled.window.requests >= 300 and load.failed() == 0
    wait_for(lambda: rig.app.state.holder.served_version == 3)
    again = altered(good, tmp_path / "runs" / "good-again", nudge)  # other files, same answers
    assert rig.selector.handle(trained("run-3", again)).type is EventType.MODEL_PROMOTED
    wait_for(lambda: (guard_state(rig.store.client, rig.store.scope, 4) or {}).get("state")
             == "settled", seconds=60)
    assert load.failed() == 0 and len(rig.rolled_back()) == 1
