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
from dataclasses import replace

from services.selector.guard_store import GuardStore, approve, guard_state
from services.selector.live import Snapshot, UrlSource, VersionStats
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
    server.traffic(2, 150, classes=[0, 1, 2, 3, 5, 5, 6, 6, 8, 9])  # classes 4 and 7 never predicted
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
    server.traffic(2, 60)
    server.status = 200
    assert g.poll() == "settled 2"  # the window ended while away: judged once figures are back


def test_a_promotion_over_a_watched_version_watches_the_new_one(world):
    selector, store, server, guard, emitted, clock, base = world
    g = _promoted(world)
    server.traffic(2, 100)
    selector.handle(_trained(base, "run-3", "third"))
    assert g.poll() == "watching 3"
    state = guard_state(store.client, store.scope, 2)
    assert state["state"] == "superseded" and "never settled" in state["reason"]


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


SHIFTED = [0, 1, 2, 3, 5, 5, 6, 7, 8, 9]  # class 4 never predicted, class 5 twice as often


def test_a_version_over_an_unsettled_one_is_judged_against_the_last_settled_window(world):
    selector, store, server, guard, emitted, clock, base = world
    g = _promoted(world)
    server.traffic(2, 150, classes=SHIFTED)  # version 2 shifted, replaced before its window ends
    assert g.poll() == "watching 2"
    selector.handle(_trained(base, "run-3", "third"))
    assert g.poll() == "watching 3"
    server.traffic(3, 200)  # every class alike, as version 1 did
    assert g.poll() == "settled 3"
    state = guard_state(store.client, store.scope, 3)
    assert state["previous_version"] == 1 and state["baseline"]["classes"] == [20] * 10
    assert guard_state(store.client, store.scope, 2)["state"] == "superseded"


def test_two_variants_of_one_bad_run_are_both_judged_against_the_last_settled_one(world):
    selector, store, server, guard, emitted, clock, base = world
    g = _promoted(world)
    server.traffic(2, 100, classes=SHIFTED)
    assert g.poll() == "watching 2"
    selector.handle(_trained(base, "run-2", "third"))  # the same run's better variant
    assert g.poll() == "watching 3"
    server.traffic(3, 200, classes=SHIFTED)
    assert g.poll() == "rolled back 3"
    data = emitted[-1].data
    assert (data.rule, data.previous_version) == ("class_distribution", 1)
    champion = store.get()  # back past version 2 (unsettled) to version 1's model
    assert (champion.run_id, champion.version, data.restored_version) == ("run-1", 5, 5)
    assert [d["champion_version"] for d in store.decisions() if d["type"] == "rollback"] == [3, 4]
    assert g.poll() is None and store.get().version == 5


def test_a_guard_that_dies_inside_a_chain_of_rollbacks_finishes_it(world):
    selector, store, server, guard, emitted, clock, base = world
    g = _promoted(world)
    selector.handle(_trained(base, "run-3", "third"))
    assert g.poll() == "watching 3"
    for _ in range(5):
        server.answer(3, code=500)
    calls = []

    def once_then_die(reason, version):
        calls.append(version)
        if len(calls) == 2:
            raise Died
        return selector.rollback(reason, version)

    with pytest.raises(Died):
        _guard(world, rollback=once_then_die).poll()
    assert store.get().run_id == "run-2"  # version 2's model serves again, as version 4
    assert _guard(world).poll() == "rolled back 3"
    assert (store.get().run_id, store.get().version) == ("run-1", 5)


def test_a_guard_started_after_a_promotion_it_never_saw_watches_it(world):
    selector, store, server, guard, emitted, clock, base = world
    selector.handle(_trained(base, "run-1", "first"))
    server.traffic(1, 300)
    assert guard().poll() is None
    selector.handle(_trained(base, "run-2", "second"))  # the selector dies before its guard polls
    g = guard()  # the restarted selector's guard
    for _ in range(5):
        server.answer(2, code=500)
    assert g.poll() == "rolled back 2"
    assert store.get().run_id == "run-1"


def test_a_rollback_that_cannot_be_published_is_tried_again(world, monkeypatch):
    selector, store, server, guard, emitted, clock, base = world
    g = _breaking(world)
    real = selector._backend.publish
    calls = []

    def flaky(staged, at_once=False):
        calls.append(staged)
        if len(calls) == 1:
            raise OSError("disk hiccup")
        return real(staged, at_once)

    monkeypatch.setattr(selector._backend, "publish", flaky)
    assert g.poll() == "rollback of 2 failed, trying again in 1 s"
    assert store.get().version == 2 and g.poll() == "rolling back 2: trying again later"
    clock.now += 1
    assert g.poll() == "rolled back 2"
    assert store.get().run_id == "run-1"


def test_a_failed_promotion_over_a_watched_version_keeps_its_watch(world, monkeypatch):
    selector, store, server, guard, emitted, clock, base = world
    g = _promoted(world)
    real = selector._backend.publish

    def fail_once(staged, at_once=False):
        monkeypatch.setattr(selector._backend, "publish", real)
        raise OSError("disk full")

    monkeypatch.setattr(selector._backend, "publish", fail_once)
    assert selector.handle(_trained(base, "run-3", "third")).type is EventType.MODEL_REJECTED
    assert store.get().version == 2 and store.get().generation == 4  # a new generation
    assert g.poll() == "watching 2"
    for _ in range(5):
        server.answer(2, code=500)
    assert g.poll() == "rolled back 2"


def test_heavy_traffic_between_two_polls_still_gives_a_baseline(world):
    selector, store, server, guard, emitted, clock, base = world
    selector.handle(_trained(base, "run-1", "first"))
    g = guard()  # a window of 200 answers
    server.traffic(1, 300)
    assert g.poll() is None
    server.traffic(1, 300)  # more than a window between two polls
    assert g.poll() is None
    selector.handle(_trained(base, "run-2", "second"))
    assert g.poll() == "watching 2"
    server.traffic(2, 200, classes=SHIFTED)
    assert g.poll() == "rolled back 2"
    assert emitted[-1].data.rule == "class_distribution"
    assert emitted[-1].data.baseline.requests == 300


def test_a_window_without_enough_answers_keeps_watching(world, caplog):
    selector, store, server, guard, emitted, clock, base = world
    g = _promoted(world)
    for _ in range(300):
        server.refuse(2, 503)  # refused at the door: nothing said of the model
    clock.now += 901
    with caplog.at_level(logging.INFO, logger="services.selector.guard"):
        assert g.poll() == "watching 2" and g.poll() == "watching 2"
    said = [r.message for r in caplog.records if "< 50" in r.message]
    assert len(said) == 1 and "0 answers < 50: still watching" in said[0]
    assert guard_state(store.client, store.scope, 2)["state"] == "watching"
    server.traffic(2, 50)
    assert g.poll() == "settled 2"


class _Sixteen:
    """A server serving sixteen versions, version 16 the one promoted; its clock advancing half a
    second a look."""

    def __init__(self, clock):
        self.clock = clock

    def scrape(self):
        self.clock.now += 0.5
        return Snapshot(self.clock.now, {v: VersionStats(requests=self.clock.now)
                                         for v in range(1, 17)})


def test_the_history_keeps_only_what_baselines_need(world):
    selector, store, server, guard, emitted, clock, base = world
    selector.handle(_trained(base, "run-1", "first"))
    g = Guard(store, selector.rollback, emitted.append, _Sixteen(clock), T, Window(10**6, 600.0),
              clock=clock)
    for _ in range(2400):  # twenty minutes, a look each half second
        g.poll()
    kept = [*g._older, *g._recent]
    assert len(kept) <= 120 + 1 + 1140 + 1  # the last minute whole, then one a second
    assert kept[0].at >= clock.now - 1200 - 1 and all(set(s.versions) == {1} for s in kept)


def test_the_watch_is_changed_only_by_its_own_version(world):
    selector, store, server, guard, emitted, clock, base = world
    _promoted(world)
    records = GuardStore(store.client, store.scope)
    watch = records.watch()
    records.drop(1, {"state": "superseded"})  # an older version's: the watch stays
    assert records.watch() == watch
    assert records.intend(replace(watch, version=7), {"rule": "x"}) is None
    assert records.watch() == watch and records.intend(watch, {"rule": "x"}) is not None


def test_a_model_not_digested_at_the_opening_is_digested_at_its_rollback(world):
    selector, store, server, guard, emitted, clock, base = world
    g = _promoted(world)
    records = GuardStore(store.client, store.scope)
    records.open(replace(records.watch(), model_digest=None))  # its files were not in place
    for _ in range(5):
        server.answer(2, code=500)
    assert g.poll() == "rolled back 2" and emitted[-1].data.model_digest
    again = selector.handle(_trained(base, "run-9", "second"))
    assert "rolled back by the live guard" in again.data.reason
