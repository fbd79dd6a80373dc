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
