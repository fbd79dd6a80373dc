"""A champion version's run is kept: the selector tells ``on_promoted`` the run of each model
it makes a version (a first model, a committed promotion, a rollback), and the run's own list
of decisions loses its expiry once one of them serves a version, through every later
decision; a run none of whose models is served keeps its 30 days."""

import logging

import pytest

from events import EventType, make_event
from events.payloads import ModelTrained
from services.selector.backends import LocalBackend
from services.selector.champion import RUN_DECISIONS_TTL, ChampionStore, scoped_key
from services.selector.policy import Score
from services.selector.service import Selector

pytestmark = pytest.mark.integration


class _Scores:
    """Evaluation by a fixed table: the selector's bookkeeping is under test, not TensorFlow."""

    def __init__(self, table):
        self.table = table

    def score(self, model_uri, dataset_uri):
        return Score(self.table[model_uri.rsplit("/", 1)[-1]])


def _trained(base, run_id, name, model_type="cnn"):
    return make_event(EventType.MODEL_TRAINED, ModelTrained(
        run_id=run_id, model_type=model_type, model_uri=str(base / "cands" / name),
        dataset_uri="/ds", dataset_digest="d", val_accuracy=0.5, val_loss=1.0, seconds=1.0),
        source="t")


@pytest.fixture
def models(tmp_path):
    for name in ("first", "better", "worse", "sibling"):
        (tmp_path / "cands" / name).mkdir(parents=True)
        (tmp_path / "cands" / name / "saved_model.pb").write_text(name)
    return tmp_path


def _selector(r, base, told, **kwargs):
    scores = _Scores({"first": 0.7, "better": 0.9, "worse": 0.6, "sibling": 0.5, "1": 0.7,
                      "2": 0.9})
    return Selector(ChampionStore(r), LocalBackend(base / "repo", "fm"), scores,
                    lambda decision: None, on_promoted=told, **kwargs)


def _ttl(r, run_id):
    return r.ttl(scoped_key("default", "audit") + f":run:{run_id}")


def test_each_run_made_a_version_is_told_and_its_decisions_kept_for_good(r, models):
    told = []
    selector = _selector(r, models, told.append)
    assert selector.handle(_trained(models, "run-1", "first")).type is EventType.MODEL_PROMOTED
    assert selector.handle(_trained(models, "run-2", "worse")).type is EventType.MODEL_REJECTED
    assert selector.handle(_trained(models, "run-3", "better")).type is EventType.MODEL_PROMOTED
    assert told == ["run-1", "run-3"]  # the first model, and a committed promotion
    assert _ttl(r, "run-1") == _ttl(r, "run-3") == -1
    assert 0 < _ttl(r, "run-2") <= RUN_DECISIONS_TTL  # rejected: kept its 30 days


def test_a_later_rejection_of_a_served_runs_other_model_does_not_bring_expiry_back(r, models):
    selector = _selector(r, models, lambda run_id: None)
    selector.handle(_trained(models, "run-1", "first"))
    decision = selector.handle(_trained(models, "run-1", "sibling", model_type="dropout"))
    assert decision.type is EventType.MODEL_REJECTED
    assert _ttl(r, "run-1") == -1
    assert len(ChampionStore(r).decisions_of("run-1")) == 2


def test_a_rollback_tells_the_run_of_the_model_it_serves_again(r, models):
    told = []
    selector = _selector(r, models, told.append)
    selector.handle(_trained(models, "run-1", "first"))
    selector.handle(_trained(models, "run-3", "better"))
    selector.rollback("run-3's model misbehaves")
    assert told == ["run-1", "run-3", "run-1"]
    assert _ttl(r, "run-1") == -1


def test_a_failure_to_keep_is_logged_and_the_promotion_stands(r, models, caplog):
    def fails(run_id):
        raise RuntimeError("Redis went away")

    emitted = []
    selector = Selector(ChampionStore(r), LocalBackend(models / "repo", "fm"),
                        _Scores({"first": 0.7}), emitted.append, on_promoted=fails)
    with caplog.at_level(logging.ERROR):
        decision = selector.handle(_trained(models, "run-1", "first"))
    assert decision.type is EventType.MODEL_PROMOTED and emitted == [decision]
    assert ChampionStore(r).get().run_id == "run-1"
    assert "version 1's run run-1 was promoted, but could not be kept" in caplog.text
