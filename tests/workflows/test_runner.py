import threading

import pytest
from rich.console import Console

from events import EventType
from events.payloads import RunParameters
from workflows.runner import LocalRunner, RunRequest

pytestmark = pytest.mark.integration


def test_concurrent_runs_emit_one_completed_and_the_rest_skipped(settings, redis_handle, dataset):
    emitted = []
    lock = threading.Lock()

    def emit(event):
        with lock:
            emitted.append(event)

    runner = LocalRunner(settings, redis_handle.client, redis_handle.url, emit, Console(quiet=True))
    summaries = []
    barrier = threading.Barrier(3)

    def run():
        barrier.wait()
        summaries.append(runner.run(RunRequest(str(dataset), RunParameters(models=()))))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    kinds = sorted(e.type.short for e in emitted)
    assert kinds == ["ingestion.completed", "ingestion.skipped", "ingestion.skipped"]
    assert sorted(s["cache"]["hit"] for s in summaries) == [False, True, True]
    assert len({s["dataset_uri"] for s in summaries}) == 1
    completed = next(e for e in emitted if e.type is EventType.INGESTION_COMPLETED)
    assert completed.data.records == {"train": 600, "test": 200} and completed.data.new_shards == 2


def test_a_warm_started_run_starts_the_matching_variant_from_the_champion(
        settings, redis_handle, ingested, tmp_path, trained_models, standin_trainer):
    import json
    from pathlib import Path

    from services.selector.champion import Champion, ChampionStore
    from tests.conftest import write_dataset

    served = trained_models.copy("weak", tmp_path / "served" / "model")
    ChampionStore(redis_handle.client, str(settings.model_repo.resolve())).replace(0, Champion(
        version=1, model_uri=served.model_uri, model_type="cnn", accuracy=0.5,
        dataset_digest=served.digest, dataset_uri=ingested, run_id="before", generation=1))
    data = write_dataset(tmp_path / "data", train=600, test=100)
    runner = LocalRunner(settings, redis_handle.client, redis_handle.url, lambda e: None,
                         Console(quiet=True))
    request = RunRequest(str(data), RunParameters(models=("cnn", "dropout"), steps_per_epoch=3,
                                                  batch_size=32, warm_start=True))
    summary = runner.run(request)
    assert summary["status"] == "succeeded", summary
    results = {m: json.loads((Path(settings.runs_dir) / request.run_id / m / "result.json")
                             .read_text()) for m in ("cnn", "dropout")}
    assert results["cnn"]["warm_start"] == f"warm-started from {served.model_uri}"
    assert results["dropout"]["warm_start"] == ""  # a different variant starts from scratch


def test_a_bad_push_fails_with_ingestion_failed_and_leaves_the_last_good_dataset(
        settings, redis_handle, dataset):
    from dataset.cache import ingestion_cache
    from dataset.store import verify

    emitted = []
    runner = LocalRunner(settings, redis_handle.client, redis_handle.url, emitted.append,
                         Console(quiet=True))
    good = runner.run(RunRequest(str(dataset), RunParameters(models=())))
    assert good["status"] == "succeeded"
    bad = dataset / "increments" / "b7" / "sneaker"
    bad.mkdir(parents=True)
    (bad / "notes.txt").write_text("not an image")
    (dataset / "increments" / "b7" / "socks").mkdir()
    failed = runner.run(RunRequest(str(dataset), RunParameters(models=())))
    assert failed["status"] == "failed"
    assert "notes.txt: not a PNG or JPEG file" in failed["error"]
    assert "unknown class folder 'socks'" in failed["error"]
    event = emitted[-1]
    assert event.type is EventType.INGESTION_FAILED and len(event.data.problems) == 2
    assert event.data.run_id == failed["run_id"]
    latest = ingestion_cache(redis_handle.client, 60).latest("fashion-mnist")
    assert latest.dataset_uri == good["dataset_uri"] and verify(good["dataset_uri"]) is None
    published = list((settings.store_dir / "datasets").iterdir())
    assert [p.name for p in published] == [latest.key]  # nothing half-written beside it
