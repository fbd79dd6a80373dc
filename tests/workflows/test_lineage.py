"""The lineage of a served model, on a real history: a real watcher's dataset.updated starts
each run, the real runner trains with the test trainer, the real selector judges and promotes
into a real model repository, on a real Redis. Version 1 is served from the first dataset;
a PNG increment then starts a run whose warm-started cnn becomes version 2; taking the
increment away starts a run that reuses version 1's training from the cache and promotes
nothing; an increment copying the test split is blocked by the data gate. The lineage of
each is read back link by link."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from rich.console import Console

from core.settings import MODEL_NAME, Settings
from dataset.seed import write_png_increment
from events import EventType
from events.payloads import RunParameters
from events.sinks import RedisStreamSink
from repository.digest import model_digest
from retrain.commands.lineage import render
from services.ingest_watcher.watcher import DirectoryWatcher
from services.selector.backends import LocalBackend
from services.selector.champion import Champion, ChampionStore
from services.selector.main import build_selector
from services.trainer.options import SEED
from services.trainer.training_cache import code_version
from tests.conftest import write_dataset
from workflows import record
from workflows.lineage import KEYS, LineageNotFoundError, lineage, origin_text
from workflows.runner import LocalRunner, RunRequest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PARAMS = {"models": ("cnn",), "batch_size": 32, "validation": "warn"}


class History:
    """A data folder watched by a real watcher; each ``change`` turns the watcher's event
    into a run of the real runner, whose models the real selector judges and promotes into
    the model repository."""

    def __init__(self, redis_handle, tmp):
        self.client = redis_handle.client
        self.settings = Settings(home=tmp / "home", redis_url=redis_handle.url, offline=True,
                                 promotion_max_class_drop=1.0, _env_file=None)  # the gate's
        # figures, not its class rule, are the subject: the weak model may win a class by chance
        self.scope = str(self.settings.model_repo.resolve())
        self.data = write_dataset(tmp / "data", train=600, test=200)
        self._watcher = DirectoryWatcher(self.data, RedisStreamSink(self.client), self.client,
                                         tmp / "state", settle=0.0)
        selector = build_selector(self.settings, self.client, lambda e: None,
                                  LocalBackend(self.settings.model_repo, MODEL_NAME))

        def emit(event):
            if event.type in (EventType.MODEL_TRAINED, EventType.TRAINING_FAILED):
                selector.handle(event)

        self._runner = LocalRunner(self.settings, self.client, redis_handle.url, emit,
                                   Console(quiet=True))

    def change(self, status="succeeded", **params):
        """The run the data folder's latest change starts: (its event, its summary)."""
        self._watcher.scan_once()
        event = self._watcher.scan_once()  # the second look: settled
        assert event is not None
        request = RunRequest.from_event(event, RunParameters(**{**PARAMS, **params}))
        summary = self._runner.run(request)
        assert summary["status"] == status, summary
        return event, summary


@pytest.fixture(scope="module")
def history(redis_handle, tmp_path_factory, standin_trainer):
    """Version 1 from the first data, version 2 after a PNG increment (warm-started from 1),
    then the first data again (version 1's training reused, nothing promoted), then a leak
    of the test split into the training data (blocked)."""
    redis_handle.client.flushdb()
    h = History(redis_handle, tmp_path_factory.mktemp("lineage"))
    h.first = h.change(steps_per_epoch=3)  # the weak model: served first, as version 1
    write_png_increment(h.data, "b1", 60, seed=7)
    h.second = h.change(steps_per_epoch=8, warm_start=True)  # the good one, from version 1
    shutil.rmtree(h.data / "increments")
    h.third = h.change(steps_per_epoch=3)  # the first data again
    leak(h.data)
    h.blocked = h.change(status="blocked", validation="block")
    return h


def leak(data):
    """An increment that copies the test split into the training data: the data gate's
    leakage check blocks the run before any training."""
    folder = data / "increments" / "leak"
    folder.mkdir(parents=True)
    for part in ("images-idx3", "labels-idx1"):
        shutil.copy(data / f"t10k-{part}-ubyte.gz", folder / f"leak-{part}-ubyte.gz")


def test_a_version_promoted_after_an_increment_names_every_link(history):
    event, summary = history.second
    found = lineage(history.client, history.scope, "2")
    assert tuple(found) == KEYS and found["version"] == 2

    decision = found["decision"]  # every figure and rule the gate looked at
    assert decision["type"] == "model.promoted" and decision["version"] == 2
    assert decision["run_id"] == summary["run_id"] and decision["champion_version"] == 1
    assert decision["candidate_accuracy"] > decision["champion_accuracy"]
    [new] = [s for s in decision["scores"] if s["split"] == "new"]
    assert new["dataset_digest"] == summary["digest"] and len(new["candidate_per_class"]) == 10
    assert {r["name"] for r in decision["rules"]} >= {"better", "pinned_tolerance", "class_drop"}
    assert all(r["passed"] for r in decision["rules"])

    model = found["model"]  # the files served, and that they are the trained model's
    served = history.settings.model_repo / MODEL_NAME / "2"
    assert model["location"] == str(served) and model["serving"] is True
    assert model["files_digest"] == model_digest(served) and model["digest_matches"] is True
    assert model["variant"] == "cnn" and model["info"]["model_type"] == "cnn"

    training = found["training"]  # trained by this run, warm-started from version 1
    assert training["cached"] is False and training["trained_by"] == summary["run_id"]
    assert training["parameters"] == {"epochs": 1, "steps_per_epoch": 8, "batch_size": 32,
                                      "learning_rate": 0.001, "workers": 1, "seed": SEED}
    assert training["code_version"] == code_version() and training["seconds"] > 0
    assert training["warm_start"]["from_version"] == 1
    assert training["warm_start"]["digest"] == model_digest(
        history.settings.model_repo / MODEL_NAME / "1")

    dataset = found["dataset"]  # the increment ingested, the base files reused
    assert dataset["digest"] == event.data.digest == summary["digest"]
    assert dataset["previous_digest"] == history.first[0].data.digest
    [ingested] = dataset["units"]["ingested"]
    assert (ingested["source"], ingested["split"]) == ("increments/b1", "train")
    assert sorted(u["split"] for u in dataset["units"]["reused"]) == ["test", "train"]
    assert dataset["records"] == {"train": 660, "test": 200}

    validation = found["validation"]
    assert validation["status"] in ("pass", "warn") and validation["checks"]
    assert found["run"]["run_id"] == summary["run_id"]
    assert found["run"]["trigger"] == "dataset.updated/watcher"
    assert found["run"]["parameters"]["warm_start"] is True

    [cause] = found["events"]  # the watcher's event, with what its source said
    assert cause["id"] == event.id and cause["type"] == "dev.retrain.dataset.updated"
    assert cause["origin"] == {**cause["origin"], "kind": "folder",
                               "folder": str(history.data.resolve())}
    assert any(f.startswith("increments/b1/") for f in cause["files"]["added"])


def test_a_run_id_resolves_to_the_version_it_promoted(history):
    by_run = lineage(history.client, history.scope, history.second[1]["run_id"])
    assert by_run["version"] == 2
    assert by_run["model"]["files_digest"] == lineage(history.client, history.scope,
                                                      2)["model"]["files_digest"]
    assert lineage(history.client, history.scope, "1")["model"]["serving"] is False


def test_a_run_that_promoted_nothing_says_so_and_names_the_training_it_reused(history):
    _, first = history.first
    _, third = history.third
    found = lineage(history.client, history.scope, third["run_id"])
    assert found["version"] is None and found["model"] is None
    assert found["decision"]["summary"].startswith(f"run {third['run_id']} promoted no model")
    [rejected] = found["decision"]["others"]
    assert rejected["type"] == "model.rejected" and rejected["reason"]
    [training] = found["training"]["variants"].values()
    assert training["cached"] is True and training["trained_by"] == first["run_id"]
    assert training["seconds"] > 0  # the time the training it reused took
    assert found["dataset"]["units"]["ingested"] == []  # the first dataset, from the cache
    assert [e["run_id"] for e in found["events"]] == [third["run_id"], first["run_id"]]


def test_a_blocked_run_says_it_promoted_and_trained_nothing_and_names_the_checks(history):
    _, summary = history.blocked
    found = lineage(history.client, history.scope, summary["run_id"])
    assert found["version"] is None and found["model"] is None
    assert found["validation"]["status"] == "blocked"
    assert found["training"]["variants"]["cnn"]["status"] is None
    text = "\n".join(render(found))
    assert "cnn: not trained" in text and "block: leakage" in text
    assert f"run {summary['run_id']} promoted no model" in text


def test_an_unknown_version_or_run_is_refused_naming_what_there_is(history):
    with pytest.raises(LineageNotFoundError, match=r"no version 9 .*versions recorded: 1-2"):
        lineage(history.client, history.scope, "9")
    with pytest.raises(LineageNotFoundError, match="no run 'run-nope' is recorded"):
        lineage(history.client, history.scope, "run-nope")


def test_retrain_lineage_prints_each_link_or_the_json_and_refuses_an_unknown_version(history):
    env = {**os.environ, "RETRAIN_HOME": str(history.settings.home),
           "RETRAIN_REDIS_URL": history.settings.redis_url}

    def retrain(*args):
        return subprocess.run([sys.executable, "-m", "retrain.cli", "lineage", *args], env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    as_json = retrain("2", "--json")
    assert as_json.returncode == 0, as_json.stderr
    found = json.loads(as_json.stdout)
    assert found["version"] == 2 and tuple(found) == KEYS
    text = "\n".join(render(found))
    for link in ("decision", "model", "training", "dataset", "validation", "run", "events"):
        assert f"\n{link:<11}" in text
    assert "warm-started from version 1" in text and f"folder {history.data.resolve()}" in text
    unknown = retrain("99")
    assert unknown.returncode == 1 and "no version 99" in unknown.stderr
    assert unknown.stdout == ""


@pytest.mark.parametrize("origin, said", [
    ({"kind": "git", "repository": "https://git.example/data.git", "ref": "refs/heads/main",
      "commit": "98248f0e892ce4e4e37411730ac98b53f2aa1261", "pusher": "nevik",
      "delivery": "ee3a5c6c"},
     ("Git commit 98248f0e892c on refs/heads/main of https://git.example/data.git, pushed by "
      "nevik (delivery ee3a5c6c)")),
    ({"kind": "bucket", "bucket": "b", "objects_total": 250,
      "objects": [{"key": "p/a.png", "etag": "e1", "size": 3}, {"key": "p/gone.png"}]},
     "bucket b: 250 object(s): p/a.png (ETag e1, 3 bytes), p/gone.png and 248 more"),
    ({"kind": "folder", "folder": "/data/fm"}, "folder /data/fm"),
    ({"kind": "manual"}, "published by hand"),
    (None, "no origin recorded"),
])
def test_an_origin_reads_as_what_its_source_said(origin, said):
    assert origin_text(origin) == said


def guarded_history(client, scope):
    """Four versions the live guard watched, through its records' owner: 2 settled with its
    window's figures, 3 replaced mid-watch, 4 under watch; version 3's run covered two
    coalesced runs. (The stack's own guard rolling a version back: tests/test_guard_stack.py.)"""
    from events.payloads import GateRule, LiveFigures
    from services.selector.guard_store import GuardStore, Watch
    from services.selector.live import VersionStats

    store = ChampionStore(client, scope)
    for v in (1, 2, 3, 4):
        store.replace(v - 1, Champion(version=v, model_uri=f"/nowhere/{v}", model_type="cnn",
                                      accuracy=0.8, dataset_digest="d", dataset_uri="/ds",
                                      run_id=f"run-{v}", generation=v))
        store.audit({"type": "model.promoted", "run_id": f"run-{v}", "model_type": "cnn",
                     "version": v, "reason": "better"})
    covers = [{"run_id": f"run-c{i}", "event_id": f"ev-{i}", "time": 1.7e9 + i,
               "digest": f"{i}" * 64} for i in (1, 2)]
    record.save(client, {"run_id": "run-3", "status": "succeeded", "steps": [], "models": {},
                         "covers": covers})
    guards = GuardStore(client, scope)
    window = LiveFigures(version=2, requests=500, errors=1, error_rate=0.002, p99_seconds=0.006,
                         classes=(50,) * 10, seconds=41.5)
    guards.drop(2, {"state": "settled", "previous_version": 1,
                    "rules": [GateRule(name="error_rate", passed=True, value=0.002,
                                       threshold=0.01).model_dump(mode="json")],
                    "window": window.model_dump(mode="json"),
                    "baseline": window.model_copy(update={"version": 1}).model_dump(mode="json")})
    guards.drop(3, {"state": "superseded", "by": 4})
    guards.open(Watch(4, 4, 3, "run-4", "cnn", "e" * 64, 1.7e9, VersionStats(), None))
    return covers


def test_a_version_says_what_the_live_guard_made_of_it_and_its_run_the_runs_it_covers(r):
    covers = guarded_history(r, "guarded")
    settled = lineage(r, "guarded", 2)["guard"]
    assert settled["state"] == "settled" and settled["window"]["requests"] == 500
    assert settled["summary"] == "settled after 500 answers, 1 errors: every rule passed"
    assert settled["baseline"]["version"] == 1
    third = lineage(r, "guarded", 3)
    assert third["guard"]["summary"] == "replaced by version 4 before its window ended, never settled"
    assert third["run"]["covers"] == covers
    watching = lineage(r, "guarded", 4)["guard"]
    assert watching["state"] == "watching" and watching["summary"] == (
        "watching version 4 against version 3")
    first = lineage(r, "guarded", 1)
    assert first["guard"] == {"state": None, "summary": "version 1 was not watched by the live "
                              "guard (a first model, a rollback, or the guard off)"}
    assert first["run"]["covers"] == []
    assert lineage(r, "guarded", "run-2")["guard"]["state"] == "settled"  # by its run


def test_retrain_lineage_prints_the_guards_state_and_the_runs_covered(r):
    guarded_history(r, "printed")
    lines = render(lineage(r, "printed", 3))
    guard = next(line for line in lines if line.startswith("guard"))
    assert guard.split(None, 1)[1] == "replaced by version 4 before its window ended, never settled"
    assert [line.strip() for line in lines if "coalesced into this run" in line] == [
        "covers run-c1 (event ev-1, coalesced into this run)",
        "covers run-c2 (event ev-2, coalesced into this run)"]
