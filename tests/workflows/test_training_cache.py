"""The training cache on real Redis, with the test trainer: a training identical to one
already made starts no process and reuses its model; anything its weights depend on, changed
alone, is a miss that says what changed; concurrent identical runs train once; a holder that
dies is replaced; a model deleted or altered is not trusted."""

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from rich.console import Console

from core.cache_policy import TRAINING, Policy
from events import EventType
from events.payloads import RunParameters
from services.trainer import training_cache as cache_entries
from services.trainer.training_cache import training_cache
from tests.conftest import wait_for, write_dataset
from workflows.fanout import Trainings
from workflows.runner import LocalRunner, RunRequest
from workflows.training import CONCURRENT, Memo

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("standin_trainer")]
TINY = {"steps_per_epoch": 3, "batch_size": 32}


def _runner(settings, redis_handle, emitted):
    lock = threading.Lock()

    def emit(event):
        with lock:
            emitted.append(event)

    return LocalRunner(settings, redis_handle.client, redis_handle.url, emit, Console(quiet=True))


def _step(summary, model):
    [step] = [s for s in summary["steps"] if s["name"] == f"train:{model}"]
    return step


def _trained_here(settings, summary, model):
    """Whether the run started a training process for ``model`` (its log exists)."""
    return (settings.runs_dir / summary["run_id"] / model / "train.log").is_file()


def _explain(settings, r, summary, data, warm=None, **params):
    params = RunParameters(**{"models": ("cnn",), **TINY, **params})
    options = Trainings.options("explain", params, "cnn", summary["dataset_uri"], Path("-"), warm)
    return Memo(training_cache(r, 3600), Policy.parse("exact", TRAINING)).explain(options)


def test_an_identical_run_reuses_the_model_and_each_key_part_changed_alone_misses(
        settings, redis_handle, r, dataset, tmp_path, monkeypatch):
    emitted = []
    runner = _runner(settings, redis_handle, emitted)
    first = runner.run(RunRequest(str(dataset), RunParameters(models=("cnn",), **TINY)))
    second = runner.run(RunRequest(str(dataset), RunParameters(models=("cnn",), **TINY)))
    assert first["status"] == second["status"] == "succeeded", second
    assert _trained_here(settings, first, "cnn") and not _trained_here(settings, second, "cnn")
    step = _step(second, "cnn")
    assert step["status"] == "cached" and step["seconds"] == 0
    assert step["reason"].startswith(f"hit: cnn trained on digest {first['digest'][:8]}… with "
                                     "the same parameters ")
    assert step["trained_by"] == first["run_id"]
    started = [e for e in emitted if e.type is EventType.TRAINING_STARTED]
    assert [e.data.run_id for e in started] == [first["run_id"]]  # the hit started nothing
    fresh, cached = [e.data for e in emitted if e.type is EventType.MODEL_TRAINED]
    assert (cached.cached, fresh.cached) == (True, False)
    assert cached.run_id == second["run_id"] and cached.seconds == 0.0
    assert cached.model_uri == fresh.model_uri == first["models"]["cnn"]["model_uri"]
    assert (cached.val_accuracy, cached.val_loss, cached.steps) == (
        fresh.val_accuracy, fresh.val_loss, fresh.steps)
    assert cached.weights_digest == fresh.weights_digest != ""

    # each part of the key changed alone is a miss naming it
    assert _explain(settings, r, first, dataset).decision.hit
    for change, named in (({"epochs": 2}, "epochs 1 → 2"),
                          ({"steps_per_epoch": 4}, "steps_per_epoch 3 → 4"),
                          ({"batch_size": 16}, "batch_size 32 → 16"),
                          ({"learning_rate": 0.01}, "learning_rate 0.001 → 0.01"),
                          ({"workers": 2}, "workers 1 → 2"),
                          ({"warm": fresh.model_uri}, "warm_start none → ")):
        check = _explain(settings, r, first, dataset, **change)
        assert not check.decision.hit and named in check.decision.reason, (change, check)
    other = runner.run(RunRequest(str(dataset), RunParameters(models=("dropout",), **TINY)))
    assert _trained_here(settings, other, "dropout")  # another variant: its own training
    monkeypatch.setattr(cache_entries, "code_version", lambda: "train-v2+0123456789ab")
    check = _explain(settings, r, first, dataset)
    assert not check.decision.hit and "code train-v1+" in check.decision.reason
    monkeypatch.undo()
    changed = write_dataset(tmp_path / "changed", train=600, test=200, seed=11)
    ingested = runner.run(RunRequest(str(changed), RunParameters(models=())))
    check = _explain(settings, r, ingested, changed)
    assert not check.decision.hit and "dataset_digest " in check.decision.reason


def test_a_deleted_or_altered_model_is_a_miss_with_its_reason_and_is_trained_again(
        settings, redis_handle, dataset):
    runner = _runner(settings, redis_handle, [])
    first = runner.run(RunRequest(str(dataset), RunParameters(models=("cnn",), **TINY)))
    model = Path(first["models"]["cnn"]["model_uri"])
    os.utime(model / "saved_model.pb")  # touched, not changed: the digest still vouches for it
    touched = runner.run(RunRequest(str(dataset), RunParameters(models=("cnn",), **TINY)))
    assert _step(touched, "cnn")["status"] == "cached"
    with (model / "variables" / "variables.index").open("ab") as f:
        f.write(b"\0")
    altered = runner.run(RunRequest(str(dataset), RunParameters(models=("cnn",), **TINY)))
    assert _trained_here(settings, altered, "cnn")
    assert f"miss: model {model} was altered (files digest " in _step(altered, "cnn")["reason"]
    again = Path(altered["models"]["cnn"]["model_uri"])
    assert again != model
    import shutil

    shutil.rmtree(again)
    deleted = runner.run(RunRequest(str(dataset), RunParameters(models=("cnn",), **TINY)))
    assert _trained_here(settings, deleted, "cnn")
    assert _step(deleted, "cnn")["reason"] == f"miss: model {again} is gone (no saved_model.pb)"
    hit = runner.run(RunRequest(str(dataset), RunParameters(models=("cnn",), **TINY)))
    assert hit["models"]["cnn"]["model_uri"] == deleted["models"]["cnn"]["model_uri"]


def test_policies_off_force_and_max_age(settings, redis_handle, r, dataset):
    runner = _runner(settings, redis_handle, [])
    cache = training_cache(r, 3600)

    def run(**params):
        summary = runner.run(RunRequest(str(dataset), RunParameters(models=("cnn",), **TINY,
                                                                    **params)))
        assert summary["status"] == "succeeded", summary
        return summary, _step(summary, "cnn")

    _off, step = run(train_cache="off")
    assert step["reason"] == "miss: the training cache is off for this run"
    assert cache.entries() == []  # off neither reads nor writes
    forced, step = run(force=True)
    assert _trained_here(settings, forced, "cnn") and step["reason"].startswith("miss: forced")
    [entry] = cache.entries()
    assert entry.run_id == forced["run_id"]  # a forced training is recorded
    time.sleep(1.2)
    old, step = run(train_cache="max-age=1s")
    assert _trained_here(settings, old, "cnn")
    assert "is older than max-age=1s" in step["reason"]
    [entry] = cache.entries()
    assert entry.run_id == old["run_id"]  # and replaced by the training that followed
    fresh, step = run(train_cache="max-age=1h")
    assert not _trained_here(settings, fresh, "cnn") and step["status"] == "cached"
    assert fresh["models"]["cnn"]["model_uri"] == old["models"]["cnn"]["model_uri"]


def test_ten_concurrent_identical_runs_train_each_variant_once(settings, redis_handle, dataset,
                                                              monkeypatch):
    monkeypatch.setenv("RETRAIN_STANDIN_STEP_SECONDS", "0.5")  # long enough to be waited for
    emitted = []
    runner = _runner(settings, redis_handle, emitted)
    barrier = threading.Barrier(10)
    summaries = []

    def run():
        barrier.wait()
        summaries.append(runner.run(RunRequest(
            str(dataset), RunParameters(models=("cnn", "dropout"), **TINY))))

    threads = [threading.Thread(target=run) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(summaries) == 10 and {s["status"] for s in summaries} == {"succeeded"}
    for model in ("cnn", "dropout"):
        trained = [s for s in summaries if _trained_here(settings, s, model)]
        assert len(trained) == 1, model
        uris = {s["models"][model]["model_uri"] for s in summaries}
        assert uris == {trained[0]["models"][model]["model_uri"]}
        reasons = [_step(s, model)["reason"] for s in summaries if s is not trained[0]]
        assert all(r == CONCURRENT or r.startswith(f"hit: {model} trained on digest")
                   for r in reasons), reasons  # waited for the holder, or came after it
        assert CONCURRENT in reasons, reasons  # some did wait
    assert len([e for e in emitted if e.type is EventType.TRAINING_STARTED]) == 2


def test_a_waiter_trains_when_the_holder_is_killed(settings, redis_handle, r, dataset):
    env = {**os.environ, "RETRAIN_HOME": str(settings.home), "RETRAIN_REDIS_URL": redis_handle.url,
           "RETRAIN_TRAINING_LEASE_SECONDS": "2",
           "RETRAIN_STANDIN_STEP_SECONDS": "2"}  # the holder is still training when killed
    holder = subprocess.Popen(
        [sys.executable, "-m", "retrain.cli", "run", "--data", str(dataset), "--models", "cnn",
         "--steps-per-epoch", "3", "--batch-size", "32"], env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: any(r.scan_iter(cache_entries.PREFIX + "lock:*")), 60)
        emitted = []
        runner = _runner(settings.model_copy(update={"training_lease_seconds": 2.0}),
                         redis_handle, emitted)
        summaries = []
        waiter = threading.Thread(target=lambda: summaries.append(runner.run(RunRequest(
            str(dataset), RunParameters(models=("cnn",), **TINY)))))
        waiter.start()
        time.sleep(1.0)  # the waiter finds the key held and waits
        assert not emitted or all(e.type is not EventType.TRAINING_STARTED for e in emitted)
        os.killpg(holder.pid, signal.SIGKILL)
        killed_at = time.time()
        holder.wait(10)
        waiter.join(120)
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
    [summary] = summaries
    assert summary["status"] == "succeeded", summary
    assert _trained_here(settings, summary, "cnn")
    [started] = [e for e in emitted if e.type is EventType.TRAINING_STARTED]
    assert datetime.fromisoformat(started.time).timestamp() > killed_at  # after the holder died, not alongside it
    [entry] = training_cache(r, 3600).entries()
    assert entry.run_id == summary["run_id"]
