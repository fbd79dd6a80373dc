"""The selector judges the same candidate content once per champion: a training-cache hit
(the same model folder again, from a new run) gets the recorded decision, "already judged",
without its model being loaded; scores are remembered by model content across processes."""

import shutil

import pytest

from events import EventType, make_event
from events.payloads import ModelTrained
from services.selector.backends import LocalBackend
from services.selector.champion import ChampionStore
from services.selector.service import Selector

pytestmark = pytest.mark.integration


class Counting:
    """The real evaluator, counting the models it had to load."""

    def __init__(self):
        from services.selector.evaluate import Evaluator

        self.evaluator, self.loaded = Evaluator(), []

    def score(self, model_uri, dataset_uri):
        self.loaded.append(model_uri)
        return self.evaluator.score(model_uri, dataset_uri)


def _event(result, run_id, dataset_uri, cached=False):
    return make_event(EventType.MODEL_TRAINED, ModelTrained(
        run_id=run_id, model_type="cnn", model_uri=result.model_uri, dataset_uri=dataset_uri,
        dataset_digest=result.digest, val_accuracy=result.val_accuracy, val_loss=result.val_loss,
        seconds=0.0 if cached else result.seconds, cached=cached,
        weights_digest=result.weights_digest), source="retrain/trainer", id=f"{run_id}/cnn/trained")


def test_a_candidate_judged_against_the_same_champion_is_not_loaded_again(
        r, ingested, tmp_path, trained_models):
    good = trained_models.copy("good", tmp_path / "r1" / "model")
    weak = trained_models.copy("weak", tmp_path / "r2" / "model")
    backend = LocalBackend(tmp_path / "repo", "fashion-mnist")
    counting, emitted = Counting(), []
    selector = Selector(ChampionStore(r), backend, counting, emitted.append)
    assert selector.handle(_event(good, "r1", ingested)).type is EventType.MODEL_PROMOTED
    first = selector.handle(_event(weak, "r2", ingested))
    assert first.type is EventType.MODEL_REJECTED
    assert counting.loaded == [good.model_uri, weak.model_uri]

    again = selector.handle(_event(weak, "r3", ingested, cached=True))
    assert again.type is EventType.MODEL_REJECTED
    assert again.id == "r3/cnn/decision" and again.data.run_id == "r3"
    assert again.data.reason == ("already judged against champion version 1 on this test split "
                                 f"(run r2): {first.data.reason}")
    assert again.data.candidate_accuracy == first.data.candidate_accuracy
    assert counting.loaded == [good.model_uri, weak.model_uri]  # nothing loaded
    assert emitted[-1] == again
    assert ChampionStore(r).decided(f"r3/cnn@{weak.model_uri}")["id"] == again.id  # recorded

    # the champion's own training, hit again: its score is remembered, it is not loaded
    tie = selector.handle(_event(good, "r4", ingested, cached=True))
    assert tie.type is EventType.MODEL_REJECTED and "not better" in tie.data.reason
    assert len(counting.loaded) == 2

    # another selector process remembers too
    other = Counting()
    later = Selector(ChampionStore(r), backend, other, lambda e: None)
    assert later.handle(_event(weak, "r5", ingested)).data.reason.startswith("already judged")
    assert other.loaded == []

    # what counts is the folder's content, computed here, not its path or the event's claim:
    # the weak model's folder now holding the champion's files is the champion's judgement
    shutil.rmtree(weak.model_uri)
    shutil.copytree(good.model_uri, weak.model_uri)
    swapped = later.handle(_event(weak, "r6", ingested))
    assert "(run r4): refused by better: not better" in swapped.data.reason
    assert swapped.data.candidate_accuracy == tie.data.candidate_accuracy
    assert other.loaded == []
