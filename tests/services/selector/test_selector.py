import threading

import pytest

from events import EventType, make_event
from events.payloads import ModelTrained
from repository.layout import versions
from services.selector.backends import LocalBackend
from services.selector.champion import Champion, ChampionStore
from services.selector.policy import ChampionPolicy, Figures, Score, Split, gate
from services.selector.service import Selector


def judge(policy, candidate, champion):
    """The gate on the new split alone (no pinned set, no per-class scores)."""
    return gate(policy, Figures(Split("new", "d", Score(candidate),
                                      None if champion is None else Score(champion))))


def test_policy_first_model_is_promoted():
    assert judge(ChampionPolicy(), 0.5, None).promote


def test_policy_requires_the_minimum_improvement():
    assert not judge(ChampionPolicy(0.01), 0.805, 0.8).promote
    assert judge(ChampionPolicy(0.01), 0.82, 0.8).promote
    assert not judge(ChampionPolicy(), 0.8, 0.8).promote  # a tie keeps the champion


@pytest.mark.integration
def test_compare_and_set_refuses_a_stale_generation(r):
    store = ChampionStore(r)
    first = Champion(1, "/m/1", "cnn", 0.8, "d", "/ds", "run", generation=1)
    assert store.replace(0, first)
    assert not store.replace(0, Champion(2, "/m/2", "cnn", 0.7, "d", "/ds", "run", generation=1))
    assert store.get() == first


@pytest.mark.integration
def test_a_champions_score_is_kept_to_the_last_digit(r):
    """A rounded score would let the champion's own model beat it (0.42333333333333 <
    0.42333333333333334): Redis's cjson keeps 14 digits, so the score is not written by it."""
    store = ChampionStore(r)
    assert store.replace(0, Champion(1, "/m/1", "cnn", None, "d", "/ds", "run", generation=1))
    assert store.set_accuracy(1, 0.42333333333333334)
    assert store.get().accuracy == 0.42333333333333334
    assert not store.set_accuracy(2, 0.5)  # another generation: nothing changes
    assert store.get().accuracy == 0.42333333333333334


class _Scores:
    """Evaluation by a fixed table: the selector's logic is under test here, not TensorFlow."""

    def __init__(self, table):
        self.table = table
        self.calls = []

    def score(self, model_uri, dataset_uri):
        self.calls.append((model_uri, dataset_uri))
        return Score(self.table[(model_uri.rsplit("/", 1)[-1], dataset_uri)])


def _trained(base, name, dataset="/ds1"):
    return make_event(EventType.MODEL_TRAINED, ModelTrained(
        run_id="r1", model_type="cnn", model_uri=str(base / "cands" / name), dataset_uri=dataset,
        dataset_digest="d", val_accuracy=0.5, val_loss=1.0, seconds=1.0), source="t")


@pytest.fixture
def repo_with_models(tmp_path):
    for name in ("a", "b", "c"):
        (tmp_path / "cands" / name).mkdir(parents=True)
        (tmp_path / "cands" / name / "saved_model.pb").write_text(name)
    return tmp_path


@pytest.mark.integration
def test_late_worse_candidates_never_replace_a_better_champion(r, repo_with_models):
    base = repo_with_models
    scores = _Scores({("a", "/ds1"): 0.7, ("b", "/ds1"): 0.9, ("c", "/ds1"): 0.8})
    emitted = []
    selector = Selector(ChampionStore(r), LocalBackend(base / "repo", "fm"), scores, emitted.append)
    events = [_trained(base, n) for n in ("a", "b", "c")]
    threads = [threading.Thread(target=selector.handle, args=(e,)) for e in events]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    champion = ChampionStore(r).get()
    assert champion.accuracy == 0.9
    assert (base / "repo" / "fm" / str(champion.version) / "saved_model.pb").read_text() == "b"
    assert len(ChampionStore(r).decisions()) == 3
    assert {e.type for e in emitted} <= {EventType.MODEL_PROMOTED, EventType.MODEL_REJECTED}


@pytest.mark.integration
def test_champion_is_rescored_on_the_new_test_split(r, repo_with_models):
    base = repo_with_models
    scores = _Scores({("a", "/ds1"): 0.9, ("1", "/ds2"): 0.6, ("b", "/ds2"): 0.7})
    selector = Selector(ChampionStore(r), LocalBackend(base / "repo", "fm"), scores, lambda e: None)
    selector.handle(_trained(base, "a"))
    decision = selector.handle(_trained(base, "b", dataset="/ds2"))
    # 0.7 < 0.9 on the old split, but the fair comparison is on the new split: 0.7 > 0.6
    assert decision.type is EventType.MODEL_PROMOTED
    assert (str(base / "repo" / "fm" / "1"), "/ds2") in scores.calls
    assert versions(base / "repo" / "fm") == [1, 2]


@pytest.mark.integration
def test_a_failed_copy_changes_neither_champion_nor_repository(r, repo_with_models):
    base = repo_with_models
    scores = _Scores({("a", "/ds1"): 0.7, ("ghost", "/ds1"): 0.9})
    store = ChampionStore(r)
    selector = Selector(store, LocalBackend(base / "repo", "fm"), scores, lambda e: None)
    selector.handle(_trained(base, "a"))
    before = store.get()
    with pytest.raises(FileNotFoundError):
        selector.handle(_trained(base, "ghost"))  # scored, better, but its files are gone
    assert store.get() == before
    assert sorted(p.name for p in (base / "repo" / "fm").iterdir()) == ["1"]


@pytest.mark.integration
def test_real_models_are_evaluated_and_promoted(r, ingested, tmp_path, trained_models):
    from services.selector.evaluate import Evaluator

    good = trained_models.copy("good", tmp_path / "good")
    weak = trained_models.copy("weak", tmp_path / "weak")
    selector = Selector(ChampionStore(r), LocalBackend(tmp_path / "repo", "fashion-mnist"),
                        Evaluator(), lambda e: None)

    def event(result):
        return make_event(EventType.MODEL_TRAINED, ModelTrained(
            run_id="r", model_type="cnn", model_uri=result.model_uri, dataset_uri=ingested,
            dataset_digest=result.digest, val_accuracy=result.val_accuracy,
            val_loss=result.val_loss, seconds=result.seconds), source="t")

    assert selector.handle(event(good)).type is EventType.MODEL_PROMOTED
    assert selector.handle(event(weak)).type is EventType.MODEL_REJECTED
    assert ChampionStore(r).get().version == 1


@pytest.mark.integration
def test_rollback_serves_the_previous_champion_as_a_new_version(r, repo_with_models):
    from services.selector.errors import NothingToRollBackError

    base = repo_with_models
    scores = _Scores({("a", "/ds1"): 0.7, ("b", "/ds1"): 0.9})
    emitted = []
    store = ChampionStore(r)
    selector = Selector(store, LocalBackend(base / "repo", "fm"), scores, emitted.append)
    with pytest.raises(NothingToRollBackError, match="no champion at all"):
        selector.rollback()
    selector.handle(_trained(base, "a"))
    with pytest.raises(NothingToRollBackError, match="no previous champion"):
        selector.rollback()
    selector.handle(_trained(base, "b"))
    assert store.get().version == 2
    decision = selector.rollback("b misbehaves in production")
    champion = store.get()
    # versions only grow: the old model comes back as version 3, which every server picks up
    assert champion.version == 3 and champion.accuracy == 0.7 and champion.generation == 3
    assert (base / "repo" / "fm" / "3" / "saved_model.pb").read_text() == "a"
    assert decision.type is EventType.MODEL_PROMOTED and decision.data.version == 3
    assert "b misbehaves" in decision.data.reason and "was version 1" in decision.data.reason
    assert store.decisions()[-1]["type"] == "rollback"
    assert emitted[-1] is decision
    # every version that served stays readable by its number, the rolled-back one too
    assert [(store.champion(v).version, store.champion(v).accuracy) for v in (1, 2, 3)] == [
        (1, 0.7), (2, 0.9), (3, 0.7)]
    assert store.champion(4) is None
    # the history is consumed: there is nothing before the first champion
    with pytest.raises(NothingToRollBackError):
        selector.rollback()
    # a later, better candidate is judged against the restored champion as usual
    assert selector.handle(_trained(base, "b")).type is EventType.MODEL_PROMOTED


@pytest.mark.integration
def test_rollback_refuses_when_the_champion_moved_meanwhile(r, repo_with_models):
    from services.selector.errors import SelectorError

    base = repo_with_models
    store = ChampionStore(r)
    selector = Selector(store, LocalBackend(base / "repo", "fm"),
                        _Scores({("a", "/ds1"): 0.7, ("b", "/ds1"): 0.9}), lambda e: None)
    selector.handle(_trained(base, "a"))
    selector.handle(_trained(base, "b"))
    current, (previous, length) = store.get(), store.previous()
    intruder = Champion(9, "/x", "cnn", 0.95, "d", "/ds1", "other", current.generation + 1)
    assert store.replace(current.generation, intruder)  # another selector promoted meanwhile
    assert not store.restore(current.generation, length, previous)
    assert store.get() == intruder
    original = store.previous
    store.previous = lambda: (previous, length)  # the stale read a racing rollback would make
    try:
        with pytest.raises(SelectorError, match="changed during the rollback"):
            Selector(store, LocalBackend(base / "repo", "fm"), _Scores({}), lambda e: None).rollback()
    finally:
        store.previous = original
    assert store.get() == intruder
    assert not [p for p in (base / "repo" / "fm").iterdir() if p.name.startswith(".tmp")]


def _candidate(base, name, model_type, val_loss=1.0, run_id="r1"):
    return make_event(EventType.MODEL_TRAINED, ModelTrained(
        run_id=run_id, model_type=model_type, model_uri=str(base / "cands" / name),
        dataset_uri="/ds1", dataset_digest="d", val_accuracy=0.5, val_loss=val_loss, seconds=1.0),
        source="t")


def test_policy_settings_are_validated():
    with pytest.raises(ValueError, match="quorum must be at least 1"):
        ChampionPolicy(quorum=0)
    with pytest.raises(ValueError, match="deadline must be positive"):
        ChampionPolicy(deadline_seconds=0)
    with pytest.raises(ValueError, match="min_improvement"):
        ChampionPolicy(min_improvement=-0.1)


@pytest.mark.integration
def test_a_quorum_round_promotes_only_its_best_and_late_models_are_judged_alone(r, repo_with_models):
    base = repo_with_models
    scores = _Scores({("a", "/ds1"): 0.7, ("b", "/ds1"): 0.9, ("c", "/ds1"): 0.95})
    emitted = []
    store = ChampionStore(r)
    selector = Selector(store, LocalBackend(base / "repo", "fm"), scores, emitted.append,
                        ChampionPolicy(quorum=2))
    assert selector.handle(_candidate(base, "a", "cnn")) is None  # waits for its round
    assert emitted == [] and store.get() is None
    decision = selector.handle(_candidate(base, "b", "dropout"))
    assert decision.type is EventType.MODEL_PROMOTED
    assert decision.data.reason.startswith("round r1 closed by quorum with 2 model(s); best of the round")
    rejected = [e for e in emitted if e.type is EventType.MODEL_REJECTED]
    assert [e.data.model_type for e in rejected] == ["cnn"]
    assert "dropout 0.9000 beat it (0.7000)" in rejected[0].data.reason
    assert versions(base / "repo" / "fm") == [1]  # one promotion for the round, not two
    late = selector.handle(_candidate(base, "c", "batch_norm"))
    assert late.type is EventType.MODEL_PROMOTED
    assert late.data.reason.startswith("arrived after its round closed; better: 0.9500")
    assert [d["model_type"] for d in store.decisions()] == ["dropout", "cnn", "batch_norm"]


@pytest.mark.integration
def test_a_deadline_closes_the_round_with_what_arrived(r, repo_with_models):
    import time

    base = repo_with_models
    emitted = []
    selector = Selector(ChampionStore(r), LocalBackend(base / "repo", "fm"),
                        _Scores({("a", "/ds1"): 0.7}), emitted.append,
                        ChampionPolicy(quorum=3, deadline_seconds=0.3))
    assert selector.handle(_candidate(base, "a", "cnn")) is None
    deadline = time.monotonic() + 10
    while not emitted:
        assert time.monotonic() < deadline, "the deadline never closed the round"
        time.sleep(0.02)
    assert emitted[0].type is EventType.MODEL_PROMOTED
    assert "closed by deadline with 1 model(s)" in emitted[0].data.reason
    assert selector.close_round("r1") == {}  # already closed: nothing happens twice


@pytest.mark.integration
def test_ties_in_a_round_go_to_the_lower_validation_loss(r, repo_with_models):
    base = repo_with_models
    selector = Selector(ChampionStore(r), LocalBackend(base / "repo", "fm"),
                        _Scores({("a", "/ds1"): 0.8, ("b", "/ds1"): 0.8}), lambda e: None,
                        ChampionPolicy(quorum=2))
    selector.handle(_candidate(base, "a", "cnn", val_loss=0.6))
    decision = selector.handle(_candidate(base, "b", "dropout", val_loss=0.4))
    assert decision.type is EventType.MODEL_PROMOTED and decision.data.model_type == "dropout"


@pytest.mark.integration
def test_the_first_model_is_served_before_it_is_scored(r, repo_with_models):
    base = repo_with_models
    served_when_scored = []

    class Watching(_Scores):
        def score(self, model_uri, dataset_uri):
            served_when_scored.append((base / "repo" / "fm" / "1").is_dir())
            return super().score(model_uri, dataset_uri)

    store = ChampionStore(r)
    selector = Selector(store, LocalBackend(base / "repo", "fm"),
                        Watching({("a", "/ds1"): 0.7, ("b", "/ds1"): 0.6}), lambda e: None)
    first = selector.handle(_trained(base, "a"))
    assert served_when_scored == [True]  # nothing to compare with: served, then scored
    assert first.data.candidate_accuracy == 0.7 and "served at once" in first.data.reason
    assert store.get().accuracy == 0.7  # the score is recorded on the champion afterwards
    second = selector.handle(_trained(base, "b"))  # judged against the recorded score
    assert second.type is EventType.MODEL_REJECTED and "vs champion 0.7000" in second.data.reason


def _failed(run_id, model_type, size):
    from events.payloads import TrainingFailed

    return make_event(EventType.TRAINING_FAILED, TrainingFailed(
        run_id=run_id, model_type=model_type, reason="exit 1", round_size=size), source="t")


def _sized(base, name, model_type, size, run_id="r1"):
    event = _candidate(base, name, model_type, run_id=run_id)
    return make_event(EventType.MODEL_TRAINED, event.data.model_copy(update={"round_size": size}),
                      source="t")


@pytest.mark.integration
def test_a_quorum_round_closes_when_all_the_runs_trainings_have_ended_failures_included(
        r, repo_with_models):
    base = repo_with_models
    emitted = []
    store = ChampionStore(r)
    selector = Selector(store, LocalBackend(base / "repo", "fm"),
                        _Scores({("a", "/ds1"): 0.7, ("b", "/ds1"): 0.9}), emitted.append,
                        ChampionPolicy(quorum=3))  # no deadline: only the run's end can close it
    assert selector.handle(_sized(base, "a", "cnn", 3)) is None
    assert selector.handle(_failed("r1", "batch_norm", 3)) is None
    assert emitted == []  # two of three ended
    decision = selector.handle(_sized(base, "b", "dropout", 3))
    assert decision.type is EventType.MODEL_PROMOTED and decision.data.model_type == "dropout"
    assert decision.data.reason.startswith(
        "round r1 closed by the end of the run's trainings with 2 model(s)")
    assert [e.data.model_type for e in emitted] == ["dropout", "cnn"]

    # the last training to end is a failure: that closes the round too
    selector.handle(_sized(base, "a", "cnn", 2, run_id="r2"))
    assert len(emitted) == 2
    selector.handle(_failed("r2", "dropout", 2))
    assert len(emitted) == 3 and emitted[2].data.run_id == "r2"


@pytest.mark.integration
def test_a_training_told_failed_whose_model_arrives_after_counts_once(r, repo_with_models):
    """The cluster's exit handler tells training.failed for a training whose TFJob it could
    not stop; if that job's model.trained arrives after, the run's trainings are not all
    ended because one was counted twice."""
    base = repo_with_models
    emitted = []
    selector = Selector(ChampionStore(r), LocalBackend(base / "repo", "fm"),
                        _Scores({("a", "/ds1"): 0.7, ("b", "/ds1"): 0.9}), emitted.append,
                        ChampionPolicy(quorum=3))
    selector.handle(_failed("r1", "cnn", 3))
    selector.handle(_sized(base, "a", "cnn", 3))
    selector.handle(_failed("r1", "dropout", 3))
    assert emitted == []  # cnn and dropout ended: two of three
    decision = selector.handle(_sized(base, "b", "batch_norm", 3))
    assert decision.type is EventType.MODEL_PROMOTED and decision.data.model_type == "batch_norm"


@pytest.mark.integration
def test_an_open_round_survives_a_selector_restart(r, repo_with_models):
    base = repo_with_models
    scores = _Scores({("a", "/ds1"): 0.9, ("b", "/ds1"): 0.7})
    first = Selector(ChampionStore(r), LocalBackend(base / "repo", "fm"), scores, lambda e: None,
                     ChampionPolicy(quorum=2))
    assert first.handle(_candidate(base, "a", "cnn")) is None
    del first  # the process is gone; the round is in Redis
    [key] = list(r.scan_iter("retrain:round:*"))
    assert 0 < r.ttl(key) <= 7 * 86400  # one nothing closes is forgotten, not kept forever

    emitted = []
    again = Selector(ChampionStore(r), LocalBackend(base / "repo", "fm"), scores, emitted.append,
                     ChampionPolicy(quorum=2))
    decision = again.handle(_candidate(base, "b", "dropout"))
    assert decision.data.reason == "round r1 closed by quorum: cnn 0.9000 beat it (0.7000)"
    promoted = [e for e in emitted if e.type is EventType.MODEL_PROMOTED]
    assert [e.data.model_type for e in promoted] == ["cnn"]  # the first selector's candidate


@pytest.mark.integration
def test_a_restarted_selector_re_arms_the_deadline_of_an_open_round(r, repo_with_models):
    import time

    base = repo_with_models
    scores = _Scores({("a", "/ds1"): 0.9})
    first = Selector(ChampionStore(r), LocalBackend(base / "repo", "fm"), scores, lambda e: None,
                     ChampionPolicy(quorum=3, deadline_seconds=3600))
    assert first.handle(_candidate(base, "a", "cnn")) is None

    emitted = []
    again = Selector(ChampionStore(r), LocalBackend(base / "repo", "fm"), scores, emitted.append,
                     ChampionPolicy(quorum=3, deadline_seconds=0.2))
    assert again.resume_rounds() == 1
    deadline = time.monotonic() + 10
    while not emitted:
        assert time.monotonic() < deadline, "the re-armed deadline never closed the round"
        time.sleep(0.02)
    assert "closed by deadline with 1 model(s)" in emitted[0].data.reason
    assert again.resume_rounds() == 0
