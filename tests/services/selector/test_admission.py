"""Nobody's model but ours: a ``model.trained`` naming a model outside the runs folder, or a
test split that is not an ingested dataset of the store, is refused at the selector's door
(403 with the reason, audited), is never loaded, and cannot become the champion; ours are
judged once, however often they are delivered (real Redis, real SavedModels, real store)."""

import shutil

import pytest
from fastapi.testclient import TestClient

from dataset.fingerprint import fingerprint
from dataset.ingest import ingest
from events import EventType, make_event
from events.codec import encode
from events.dedup import Deduplicator
from events.payloads import ModelTrained
from events.sinks import RedisStreamSink, read_stream
from services.selector.admission import Admission
from services.selector.app import create_app
from services.selector.champion import ChampionStore
from services.selector.main import STREAM, build_selector, selector_consumer
from tests.conftest import write_dataset

pytestmark = [pytest.mark.integration]


@pytest.fixture
def project(settings, tmp_path, saved_model):
    """A project with one ingested dataset in its store and one model in its runs folder."""
    root = write_dataset(tmp_path / "data", train=200, test=100)
    result = ingest(root, settings.store_dir, fingerprint(root), dataset_key="k1")
    model = settings.runs_dir / "run1" / "cnn" / "model"
    shutil.copytree(saved_model, model)
    return result, model


def _trained(model_uri, dataset_uri, digest, run_id="run1", event_id=None):
    return make_event(EventType.MODEL_TRAINED, ModelTrained(
        run_id=run_id, model_type="cnn", model_uri=str(model_uri), dataset_uri=str(dataset_uri),
        dataset_digest=digest, val_accuracy=0.9, val_loss=0.1, seconds=1.0),
        source="somebody", id=event_id)


def test_admission_names_what_is_not_ours(settings, project, tmp_path, saved_model):
    ingested, model = project
    admission = Admission(settings.runs_dir, settings.store_dir)
    ours = _trained(model, ingested.dataset_uri, ingested.digest).data
    assert admission.problem(ours) is None

    elsewhere = tmp_path / "elsewhere" / "model"
    shutil.copytree(saved_model, elsewhere)
    assert "outside the runs folder" in admission.problem(
        _trained(elsewhere, ingested.dataset_uri, ingested.digest).data)
    link = settings.runs_dir / "run2"  # a link inside the runs folder leading out of it
    link.symlink_to(elsewhere.parent)
    assert "outside the runs folder" in admission.problem(
        _trained(link / "model", ingested.dataset_uri, ingested.digest).data)
    dotdot = settings.runs_dir / ".." / ".." / "elsewhere" / "model"
    assert "outside the runs folder" in admission.problem(
        _trained(dotdot, ingested.dataset_uri, ingested.digest).data)
    assert "does not exist" in admission.problem(
        _trained(settings.runs_dir / "nope", ingested.dataset_uri, ingested.digest).data)

    fake = tmp_path / "fake-split"  # a copy of a real dataset, outside the store
    shutil.copytree(ingested.dataset_uri, fake)
    assert "not a dataset of the store" in admission.problem(
        _trained(model, fake, ingested.digest).data)
    assert "not the event's dataset_digest" in admission.problem(
        _trained(model, ingested.dataset_uri, "0" * 64).data)


def test_a_strangers_model_is_refused_at_the_door_and_never_served(settings, project, r,
                                                                   tmp_path, saved_model):
    ingested, model = project
    emitted = []
    selector = build_selector(settings, r, emitted.append)
    client = TestClient(create_app(selector, Deduplicator(r, 60, "selector-http"),
                                   RedisStreamSink(r, STREAM).send))
    crafted = tmp_path / "attacker" / "model"
    shutil.copytree(saved_model, crafted)

    for event, expected in (
        (_trained(crafted, ingested.dataset_uri, ingested.digest), "outside the runs folder"),
        (_trained(model, tmp_path / "attacker", ingested.digest), "not a dataset of the store"),
    ):
        headers, body = encode(event, "binary")
        answer = client.post("/events", content=body, headers=headers)
        assert answer.status_code == 403 and expected in answer.json()["error"]
    assert ChampionStore(r, str(settings.model_repo.resolve())).get() is None
    assert not list(settings.model_repo.rglob("saved_model.pb"))  # nothing staged
    assert r.xlen(STREAM) == 0  # nothing queued for judgement
    audit = ChampionStore(r, str(settings.model_repo.resolve())).decisions()
    assert [a["type"] for a in audit] == ["refused", "refused"]
    assert all(a["sender"] == "somebody" for a in audit)
    assert [e.type for e in emitted] == [EventType.MODEL_REJECTED] * 2
    # a refusal never takes the id the candidate's real decision will carry
    assert all(e.id.startswith("refused/somebody/") for e in emitted)

    # ours is taken (durably: on the stream before the 202) and judged once, however often
    # it is delivered, under any event id
    for event_id in ("a", "a", "b"):
        headers, body = encode(_trained(model, ingested.dataset_uri, ingested.digest,
                                        event_id=event_id), "binary")
        assert client.post("/events", content=body, headers=headers).status_code == 202
    assert r.xlen(STREAM) == 2  # "a" again was a duplicate at the door
    consumer = selector_consumer(r, selector, settings)
    assert consumer.poll() == 2
    champion = ChampionStore(r, str(settings.model_repo.resolve())).get()
    assert champion is not None and champion.run_id == "run1"
    audit = ChampionStore(r, str(settings.model_repo.resolve())).decisions()
    assert [a["type"] for a in audit] == ["refused", "refused", "model.promoted"]
    assert [e.type for e in emitted][-2:] == [EventType.MODEL_PROMOTED] * 2  # the same decision
    assert emitted[-1].id == emitted[-2].id


def test_a_decision_is_recorded_once_whatever_crashes_after_it(settings, project, r):
    """The decision and its record are one transaction; a redelivery after a crash between the
    record and the acknowledgement emits the recorded decision instead of judging again."""
    ingested, model = project
    emitted = []
    selector = build_selector(settings, r, emitted.append)
    event = _trained(model, ingested.dataset_uri, ingested.digest)
    first = selector.handle(event)
    again = selector.handle(event)
    assert first.type is EventType.MODEL_PROMOTED and again.id == first.id
    assert again.data == first.data
    assert len(ChampionStore(r, str(settings.model_repo.resolve())).decisions()) == 1
    assert read_stream(r) == []  # emitted through the given sink only
