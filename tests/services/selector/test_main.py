"""The selector fed from the Redis stream: a candidate whose judgement was cut short is judged
when its entry is claimed again, and a duplicate is judged once (real Redis, a real model)."""

import time

import pytest

from events import EventType, make_event
from events.dedup import Deduplicator
from events.payloads import ModelTrained
from events.sinks import RedisStreamSink
from events.streams import StreamConsumer
from services.selector.backends import LocalBackend
from services.selector.champion import Champion, ChampionStore
from services.selector.evaluate import Evaluator
from services.selector.main import judge_once
from services.selector.service import Selector

pytestmark = [pytest.mark.integration]


class DiesOnce(Evaluator):
    """The real evaluator, except that the first judgement is cut short, as when the selector
    process is killed while it scores a candidate."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def score(self, model_uri, dataset_uri):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("selector killed mid-judgement")
        return super().score(model_uri, dataset_uri)


def test_a_judgement_cut_short_is_finished_by_whoever_claims_the_entry(r, tmp_path, saved_model,
                                                                      ingested):
    store = ChampionStore(r)
    assert store.replace(0, Champion(1, str(saved_model), "cnn", 0.0, "d0", ingested, "run0",
                                     generation=1))
    decisions = []
    selector = Selector(store, LocalBackend(tmp_path / "models", "fashion-mnist"), DiesOnce(),
                        decisions.append)
    trained = make_event(EventType.MODEL_TRAINED, ModelTrained(
        run_id="run1", model_type="dropout", model_uri=str(saved_model), dataset_uri=ingested,
        dataset_digest="d1", val_accuracy=0.5, val_loss=1.0, seconds=1.0), source="trainer")
    RedisStreamSink(r, "t:events").send(trained)
    judge = judge_once(selector, Deduplicator(r, 600, "selector"))

    with pytest.raises(RuntimeError, match="killed mid-judgement"):
        StreamConsumer(r, "t:events", "selector", "dead", judge, block_ms=10).poll()
    assert decisions == [] and r.xpending("t:events", "selector")["pending"] == 1

    survivor = StreamConsumer(r, "t:events", "selector", "alive", judge, claim_after=0.2,
                              block_ms=10)
    time.sleep(0.3)
    assert survivor.poll() == 1
    assert len(decisions) == 1  # judged, not skipped as a duplicate
    assert r.xpending("t:events", "selector")["pending"] == 0

    RedisStreamSink(r, "t:events").send(trained)  # delivered again: judged once all the same
    assert survivor.poll() == 1 and len(decisions) == 1
