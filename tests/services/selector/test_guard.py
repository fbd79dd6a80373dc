"""The live guard watches each promoted version against the one it replaced, on the model
server's per-version counters (here set by hand on a real prometheus_client registry served
over HTTP): the fast rule rolls back at once, the other rules at the window's end, a good
version settles; a rolled-back model is refused until approved; a restarted guard resumes."""

import logging

import pytest

from events import EventType, make_event
from events.payloads import ModelRolledBack, ModelTrained
from services.selector.backends import LocalBackend
from services.selector.champion import ChampionStore
from services.selector.errors import SelectorError
from services.selector.guard import Guard, Window
from services.selector.guard_rules import GuardThresholds
from services.selector.guard_store import approve, guard_state
from services.selector.live import UrlSource
from services.selector.policy import Score
from services.selector.service import Selector
from tests.services.selector.live_standin import MetricsServer

pytestmark = pytest.mark.integration
T = GuardThresholds(min_requests=50)


class _Scores:
    """Evaluation by a fixed table: the guard is under test, not the promotion gate."""

    def score(self, model_uri, dataset_uri):
        return Score({"first": 0.7, "second": 0.8, "third": 0.9}.get(model_uri.rsplit("/", 1)[-1], 0.75))


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def world(r, tmp_path):
    for name in ("first", "second", "third"):
        (tmp_path / "cands" / name).mkdir(parents=True)
        (tmp_path / "cands" / name / "saved_model.pb").write_text(name)
    server = MetricsServer()
    url = server.start()
    emitted = []
    store = ChampionStore(r)
    selector = Selector(store, LocalBackend(tmp_path / "repo", "fm"), _Scores(), emitted.append)
    clock = Clock()

    def guard(window=Window(200, 60.0), rollback=None, emit=None):
        return Guard(store, rollback or selector.rollback, emit or emitted.append,
                     UrlSource(url, clock=clock), T, window, poll_seconds=0.01, clock=clock)

    yield selector, store, server, guard, emitted, clock, tmp_path
    server.stop()


def _trained(base, run_id, name):
    return make_event(EventType.MODEL_TRAINED, ModelTrained(
        run_id=run_id, model_type="cnn", model_uri=str(base / "cands" / name),
        dataset_uri="/ds", dataset_digest="d", val_accuracy=0.5, val_loss=1.0, seconds=1.0),
        source="t")


def _promoted(world):
    """Version 1 served (300 answers, every class alike, 200 of them in its last window) then
    version 2 promoted over it."""
    selector, store, server, guard, emitted, clock, base = world
    selector.handle(_trained(base, "run-1", "first"))
    g = guard()
    for n in (50, 50, 200):
        server.traffic(1, n)
        assert g.poll() is None  # version 1 was a first model: nothing to watch
    assert selector.handle(_trained(base, "run-2", "second")).type is EventType.MODEL_PROMOTED
    assert g.poll() == "watching 2"
    assert guard_state(store.client, store.scope, 2)["state"] == "watching"
    return g


def test_errors_in_a_row_roll_the_version_back_at_once(world):
    selector, store, server, guard, emitted, clock, base = world
    g = _promoted(world)
    server.traffic(2, 20)
    for _ in range(5):
        server.answer(2, code=500)
    assert g.poll() == "rolled back 2"
    champion = store.get()
    assert (champion.version, champion.run_id) == (3, "run-1")  # version 1's model, served as 3
    rolled = [e for e in emitted if e.type is EventType.MODEL_ROLLEDBACK]
    assert len(rolled) == 1 and rolled[0].id == "rolledback/2"
    data = rolled[0].data
    assert isinstance(data, ModelRolledBack)
    assert (data.version, data.restored_version, data.previous_version, data.rule) == (2, 3, 1, "consecutive_errors")
    assert data.run_id == "run-2" and data.model_digest
    assert (data.window.requests, data.window.errors) == (25, 5)
    assert data.baseline.requests == 200 and data.baseline.classes == (20,) * 10  # its last window
    assert "5 errors in a row" in data.reason
    assert [r.name for r in data.rules] == ["consecutive_errors", "error_rate", "p99_latency",
                                            "class_distribution"]
    assert [d["type"] for d in store.decisions_of("run-2")] == ["model.promoted", "rolledback"]
    state = guard_state(store.client, store.scope, 2)
    assert state["state"] == "rolledback" and state["rule"] == "consecutive_errors"
    assert g.poll() is None  # version 3 is a rollback: not watched


def test_predicted_classes_that_moved_roll_back_at_the_windows_end(world):
    selector, store, server, guard, emitted, clock, base = world
    g = _promoted(world)
    server.traffic(2, 150, classes=[0, 1, 2, 3, 5, 5, 6, 7, 8, 9])  # class 4 never predicted
    assert g.poll() == "watching 2"  # 150 answers < 200, 0 s < 60 s
    clock.now += 61
    assert g.poll() == "rolled back 2"
    data = emitted[-1].data
    assert data.rule == "class_distribution" and data.window.classes[4] == 0
    assert "class 4: 0.0% against 10.0%" in data.reason or "class 5" in data.reason


def test_a_version_that_serves_as_well_settles_with_its_figures(world):
    selector, store, server, guard, emitted, clock, base = world
    g = _promoted(world)
    server.traffic(2, 199)
    assert g.poll() == "watching 2"
    server.traffic(2, 1)
    assert g.poll() == "settled 2"
    state = guard_state(store.client, store.scope, 2)
    assert state["state"] == "settled" and state["window"]["requests"] == 200
    assert all(rule["passed"] for rule in state["rules"])
    assert store.get().version == 2 and not [e for e in emitted if e.type is EventType.MODEL_ROLLEDBACK]
    assert g.poll() is None


def test_a_rolled_back_model_is_refused_until_approved(world):
    selector, store, server, guard, emitted, clock, base = world
    g = _promoted(world)
    for _ in range(5):
        server.answer(2, code=500)
    assert g.poll() == "rolled back 2"
    again = selector.handle(_trained(base, "run-9", "second"))  # the same files, another run
    assert again.type is EventType.MODEL_REJECTED
    assert "were version 2, rolled back by the live guard (consecutive_errors" in again.data.reason
    assert "retrain approve --version 2" in again.data.reason
    entry = approve(store, 2, "user:ana")
    assert entry["by"] == "user:ana" and store.decisions()[-1]["type"] == "approved"
    with pytest.raises(SelectorError, match="version 2 is not a model the live guard rolled back "
                                            r"and still refuses \(its model was approved already"):
        approve(store, 2, "user:ana")
    with pytest.raises(SelectorError, match=r"version 1 .*\(the live guard never watched it\)"):
        approve(store, 1, "user:ana")
    judged = selector.handle(_trained(base, "run-10", "second"))
    assert judged.type is EventType.MODEL_PROMOTED  # 0.8 against version 3's 0.7


def test_a_guard_restarted_mid_watch_resumes_it(world):
    selector, store, server, guard, emitted, clock, base = world
    _promoted(world)
    server.traffic(2, 100)
    restarted = guard()  # another process: nothing in memory, the watch in Redis
    assert restarted.poll() == "watching 2"
    server.traffic(2, 100)
    assert restarted.poll() == "settled 2"
    assert guard_state(store.client, store.scope, 2)["baseline"]["requests"] == 200


def test_metrics_out_of_reach_are_logged_once_and_never_roll_back(world, caplog):
    selector, store, server, guard, emitted, clock, base = world
    g = _promoted(world)
    server.status = 500
    clock.now += 3600
    with caplog.at_level(logging.WARNING, logger="services.selector.guard"):
        assert g.poll() is None and g.poll() is None
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "cannot read the model server's metrics" in caplog.records[0].message
    assert store.get().version == 2
    server.status = 200
    assert g.poll() == "settled 2"  # the window ended while away: judged once figures are back


def test_a_promotion_over_a_watched_version_watches_the_new_one(world):
    selector, store, server, guard, emitted, clock, base = world
    g = _promoted(world)
    server.traffic(2, 100)
    selector.handle(_trained(base, "run-3", "third"))
    assert g.poll() == "watching 3"
    assert guard_state(store.client, store.scope, 2)["state"] == "superseded"


class Died(Exception):
    """The guard's process stopping at that point (SIGKILL), as far as the guard can tell."""


def _guard(world, rollback=None, emit=None):
    """A guard of its own (another process, as far as Redis can tell)."""
    return world[3](rollback=rollback, emit=emit)


def _breaking(world):
    """Version 2 promoted, then answering five 500s in a row."""
    g = _promoted(world)
    for _ in range(5):
        world[2].answer(2, code=500)
    return g


def _finished_once(world):
    """What a rollback of version 2 leaves when it was carried out once: version 1's model
    serving as 3, the refusal, one audit entry, one outcome."""
    selector, store, server, guard, emitted, clock, base = world
    assert (store.get().version, store.get().run_id) == (3, "run-1")
    assert [d["type"] for d in store.decisions()].count("rollback") == 1
    assert [d["type"] for d in store.decisions_of("run-2")] == ["model.promoted", "rolledback"]
    assert guard_state(store.client, store.scope, 2)["state"] == "rolledback"
    again = selector.handle(_trained(base, "run-9", "second"))
    assert "rolled back by the live guard" in again.data.reason


def test_a_guard_that_dies_after_the_rollback_finishes_it_when_restarted(world):
    selector, store, server, guard, emitted, clock, base = world
    _breaking(world)

    def rollback_then_die(reason, version):
        selector.rollback(reason, version)
        raise Died

    with pytest.raises(Died):
        _guard(world, rollback=rollback_then_die).poll()
    assert store.get().version == 3 and guard_state(store.client, store.scope, 2)["state"] == "watching"
    assert not [e for e in emitted if e.type is EventType.MODEL_ROLLEDBACK]
    assert _guard(world).poll() == "rolled back 2"  # another process: the intent in Redis
    _finished_once(world)
    [rolled] = [e for e in emitted if e.type is EventType.MODEL_ROLLEDBACK]
    assert rolled.id == "rolledback/2" and rolled.data.restored_version == 3
    assert rolled.data.rule == "consecutive_errors" and rolled.data.window.errors == 5
    promotions = [e.id for e in emitted if e.type is EventType.MODEL_PROMOTED]
    assert promotions.count("rollback/2") == 2  # the rollback's decision sent again, same id


def test_a_guard_that_dies_before_the_rollback_rolls_back_when_restarted(world):
    selector, store, server, guard, emitted, clock, base = world
    _breaking(world)

    def die(reason, version):
        raise Died

    with pytest.raises(Died):
        _guard(world, rollback=die).poll()
    assert store.get().version == 2  # decided, not done
    server.traffic(2, 50)  # the figures may change meanwhile: the decision stands
    assert _guard(world).poll() == "rolled back 2"
    _finished_once(world)
    assert [e.id for e in emitted if e.type is EventType.MODEL_ROLLEDBACK] == ["rolledback/2"]


def test_an_event_that_cannot_be_sent_is_sent_again_with_the_same_id(world):
    selector, store, server, guard, emitted, clock, base = world
    _breaking(world)

    def emit(event):
        if event.type is EventType.MODEL_ROLLEDBACK:
            raise ConnectionError("the trigger is away")
        emitted.append(event)

    assert _guard(world, emit=emit).poll() == "rolled back 2, event not sent"
    _finished_once(world)  # rolled back, refused and audited already
    server.status = 500  # the metrics unreadable: the event still goes
    assert _guard(world).poll() == "rolled back 2"
    _finished_once(world)  # nothing twice
    assert [e.id for e in emitted if e.type is EventType.MODEL_ROLLEDBACK] == ["rolledback/2"]
    assert guard_state(store.client, store.scope, 2)["restored_version"] == 3


def test_a_version_replaced_before_its_rollback_is_left_to_its_successor(world):
    selector, store, server, guard, emitted, clock, base = world
    _breaking(world)

    def die(reason, version):
        raise Died

    with pytest.raises(Died):
        _guard(world, rollback=die).poll()
    selector.handle(_trained(base, "run-3", "third"))  # promoted meanwhile, as version 3
    assert _guard(world).poll() == "not rolled back 2"
    state = guard_state(store.client, store.scope, 2)
    assert state["state"] == "not rolled back" and "version 3 is the champion" in state["reason"]
    assert store.get().version == 3


def test_each_outcome_is_told_to_an_observer(world):
    selector, store, server, guard, emitted, clock, base = world
    g = _promoted(world)
    told = []
    g.on_outcome(lambda version, state: told.append((version, state["state"])))
    g.on_outcome(lambda version, state: 1 / 0)  # an observer failing costs nothing
    server.traffic(2, 200)
    assert g.poll() == "settled 2"
    selector.handle(_trained(base, "run-3", "third"))
    assert g.poll() == "watching 3"
    for _ in range(5):
        server.answer(3, code=500)
    assert g.poll() == "rolled back 3"
    assert told == [(2, "settled"), (3, "rolledback")]
