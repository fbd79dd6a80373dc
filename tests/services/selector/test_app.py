"""``retrain select serve``'s app: model.trained over HTTP, judged and promoted for real."""


import pytest
from fastapi.testclient import TestClient

from events import make_event
from events.codec import encode
from events.dedup import Deduplicator
from events.payloads import ModelTrained
from events.sinks import RedisStreamSink, read_stream
from events.streams import StreamConsumer
from services.selector.app import create_app
from repository.layout import versions
from services.selector.backends import LocalBackend
from services.selector.champion import ChampionStore
from services.selector.evaluate import Evaluator
from services.selector.main import judge_once
from services.selector.service import Selector

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_model_trained_over_http_is_promoted_once_and_other_types_are_ignored(
        r, ingested, tmp_path, trained_models):
    result = trained_models.copy("weak", tmp_path / "run" / "model")
    repo = tmp_path / "models"
    selector = Selector(ChampionStore(r, str(repo)), LocalBackend(repo, "fashion-mnist",
                                                                  lambda _v: None),
                        Evaluator(), RedisStreamSink(r).send)
    app = create_app(selector, Deduplicator(r, 60, namespace="selector-http"),
                     RedisStreamSink(r, "t:selector").send, api_keys=("k",))
    client = TestClient(app)
    trained = make_event("model.trained", ModelTrained(
        run_id="r1", model_type="cnn", model_uri=result.model_uri, dataset_uri=ingested,
        dataset_digest=result.digest, val_accuracy=result.val_accuracy, val_loss=result.val_loss,
        seconds=1.0, workers=1, steps=5), source="trainer", id="r1/cnn/trained")
    headers, body = encode(trained, "binary")
    headers["Authorization"] = "Bearer k"
    assert client.post("/events", content=body, headers=headers).status_code == 202
    again = client.post("/events", content=body, headers=headers)
    assert again.status_code == 202 and again.json()["duplicates"] == [trained.id]
    other_headers, other = encode(make_event("dataset.updated", {"uri": "/d"}, source="w"), "binary")
    other_headers["Authorization"] = "Bearer k"
    assert client.post("/events", content=other, headers=other_headers).status_code == 202
    assert r.xlen("t:selector") == 1  # durably queued before the 202; judged from there
    judge = judge_once(selector, Deduplicator(r, 60, namespace="selector"))
    assert StreamConsumer(r, "t:selector", "selector", "c", judge, block_ms=10).poll() == 1
    champion = ChampionStore(r, str(repo)).get()
    assert champion is not None and champion.version == 1 and champion.run_id == "r1"
    assert versions(repo / "fashion-mnist") == [1]
    assert [e["type"] for e in read_stream(r)] == ["dev.retrain.model.promoted"]

    # POST /rollback: the dashboard's way on a cluster (the selector holds the backend)
    backend = LocalBackend(repo, "fashion-mnist", lambda _v: None)
    staged = backend.stage(champion.model_uri, backend.next_version())
    backend.publish(staged)
    ChampionStore(r, str(repo)).replace(1, type(champion)(**{
        **champion.__dict__, "version": staged.version, "model_uri": staged.location,
        "generation": 2}))
    assert client.post("/rollback").status_code == 401
    assert client.post("/rollback", headers={"Authorization": "Bearer no"}).status_code == 401
    from core.http import BackgroundServer, bind
    from services.selector.errors import SelectorError
    from dashboard.main import through_selector

    server = BackgroundServer(app, bind("127.0.0.1", 0, "selector"), "selector").start()
    try:  # the dashboard's rollback on a cluster, over a real socket
        assert through_selector(server.url, "k")("from the dashboard")["reason"].startswith(
            "rollback: from the dashboard")
        assert ChampionStore(r, str(repo)).get().version == 3
        assert versions(repo / "fashion-mnist") == [1, 2, 3]
        with pytest.raises(SelectorError, match=r"refused \(409\): .*no previous champion"):
            through_selector(server.url, "k")("again")
        with pytest.raises(SelectorError, match=r"refused \(401\)"):
            through_selector(server.url, "wrong")("again")
    finally:
        server.stop()
    keyless = TestClient(create_app(selector, Deduplicator(r, 60, namespace="x"),
                                    RedisStreamSink(r, "t:x").send))
    assert keyless.post("/rollback").status_code == 403
