"""``retrain cache ls | explain | gc`` against a real Redis and a real ingestion."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dataset.ingest import CODE_VERSION
from tests.conftest import write_dataset

pytestmark = pytest.mark.integration


@pytest.fixture
def cli(tmp_path, redis_handle, r):
    env = {**os.environ, "RETRAIN_HOME": str(tmp_path / "home"),
           "RETRAIN_REDIS_URL": redis_handle.url}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "retrain.cli", *args], capture_output=True,
                              text=True, timeout=300, env=env)
    return run


def _json(done):
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_explain_ingest_ls_and_gc(cli, tmp_path):
    root = write_dataset(tmp_path / "data", train=300, test=100)
    before = _json(cli("cache", "explain", "--data", str(root), "--json"))
    assert before["would_hit"] is False and "no ingestion" in before["reason"]
    assert before["parts"]["code_version"] == CODE_VERSION and len(before["parts"]["digest"]) == 64
    assert _json(cli("cache", "ls", "--json")) == {"ingestion": [], "training": []}  # explaining ran nothing

    run = _json(cli("ingest", "--data", str(root), "--json"))
    after = _json(cli("cache", "explain", "--data", str(root), "--json"))
    assert after["would_hit"] and after["key"] == before["key"] == run["cache"]["key"]
    assert after["dataset_uri"] == run["dataset_uri"]

    [entry] = _json(cli("cache", "ls", "--kind", "ingestion", "--json"))
    assert entry["key"] == before["key"] and entry["hits"] == 0  # explain recorded no hit
    assert entry["records"] == {"train": 300, "test": 100} and entry["expires_in"] > 0

    kept = _json(cli("cache", "gc", "--grace", "0", "--kind", "ingestion", "--json"))
    assert kept["removed_datasets"] == [] and kept["kept_datasets"] == 1

    import shutil

    shutil.rmtree(run["dataset_uri"])
    gone = _json(cli("cache", "gc", "--grace", "0", "--json"))["ingestion"]
    assert gone["dropped_entries"] == [before["key"]] and len(gone["removed_units"]) == 2
    assert _json(cli("cache", "ls", "--kind", "ingestion", "--json")) == []


def test_bad_input(cli, tmp_path):
    done = cli("cache", "explain", "--data", str(tmp_path / "nope"))
    assert done.returncode == 1 and "no such folder" in done.stderr
    done = cli("cache", "explain", "--data", str(tmp_path), "--cache-policy", "min-change=2")
    assert done.returncode == 2 and "min-change needs a fraction" in done.stderr
    done = cli("cache", "gc", "--grace", "-5")
    assert done.returncode == 2 and "--grace" in done.stderr
    for out in (done.stderr,):
        assert "Traceback" not in out


@pytest.mark.slow
def test_training_entries_explained_listed_and_collected_keeping_the_champions(
        cli, tmp_path, r, redis_handle, standin_trainer):
    """gc frees the models no live training entry needs, never the champion's or one in its
    history: rollback keeps working."""
    from core.settings import Settings
    from events.payloads import RunParameters
    from retrain.oneshot import run_once
    from rich.console import Console
    from services.trainer.training_cache import PREFIX

    root = write_dataset(tmp_path / "data", train=600, test=200)
    tiny = ["--models", "cnn", "--steps-per-epoch", "3", "--batch-size", "32"]
    assert _json(cli("cache", "explain", "--data", str(root), "--kind", "training",
                     *tiny, "--json"))["reason"].startswith("the dataset is not ingested yet")
    # three runs: two as `retrain run` makes them, in this process (the cache commands are the
    # subject), the third through the command line; it trains longer: a better model,
    # promoted, so there is a history
    settings = Settings(home=tmp_path / "home", redis_url=redis_handle.url, _env_file=None)
    runs = [json.loads(json.dumps(run_once(settings, str(root), RunParameters(
        models=("cnn",), steps_per_epoch=3, batch_size=32, learning_rate=lr),
        Console(quiet=True)), default=str)) for lr in (0.001, 0.002)]
    runs.append(_json(cli("run", "--data", str(root), *tiny, "--learning-rate", "0.003",
                          "--steps-per-epoch", "10", "--json")))
    assert [run["status"] for run in runs] == ["succeeded"] * 3
    assert [d["decision"] for d in runs[2]["decisions"]] == ["model.promoted"]
    explained = _json(cli("cache", "explain", "--data", str(root), "--kind", "training",
                          *tiny, "--learning-rate", "0.002", "--json"))
    [check] = explained["trainings"]
    assert check["would_hit"] and check["model_uri"] == runs[1]["models"]["cnn"]["model_uri"]
    assert check["parts"]["learning_rate"] == 0.002 and check["parts"]["model"] == "cnn"
    listed = _json(cli("cache", "ls", "--kind", "training", "--json"))
    assert sorted(e["run_id"] for e in listed) == sorted(s["run_id"] for s in runs)

    status = _json(cli("status", "--json"))
    champion = status["champion"]
    served = {champion["run_id"]} | {d["run_id"] for s in runs for d in s["decisions"]
                                      if d["decision"] == "model.promoted"}
    assert champion is not None and served
    r.delete(*r.scan_iter(PREFIX + "entry:*"))  # every entry expired
    dry = _json(cli("cache", "gc", "--grace", "0", "--kind", "training", "--dry-run", "--json"))
    removed = {Path(m).parent.parent.name for m in dry["removed_models"]}
    assert removed == {s["run_id"] for s in runs} - served  # never a champion's, current or past
    assert all(Path(m).is_dir() for m in dry["removed_models"])  # a dry run removes nothing
    done = _json(cli("cache", "gc", "--grace", "0", "--kind", "training", "--json"))
    assert done["removed_models"] == dry["removed_models"] and done["freed_bytes"] > 0
    assert not any(Path(m).exists() for m in done["removed_models"])
    for run in runs:
        kept = Path(run["models"]["cnn"]["model_uri"])
        assert kept.is_dir() == (run["run_id"] in served)
    assert len(served) > 1, served  # a history to roll back to
    rolled = cli("select", "rollback")
    assert rolled.returncode == 0, rolled.stderr


def test_gc_never_collects_the_pinned_set_nor_a_champions_dataset(cli, tmp_path, r):
    """The promotion gate scores on the pinned set, the lineage names the champions' data:
    gc keeps them whatever the cache says, and says so."""
    from core.settings import Settings
    from dataset import pinned
    from dataset.fingerprint import fingerprint
    from dataset.ingest import ingest
    from services.selector.champion import Champion, ChampionStore

    settings = Settings(home=tmp_path / "home", _env_file=None)
    from workflows import record, validate

    uris = []
    for n in range(6):  # ingested without cache entries: nothing live points at them
        root = write_dataset(tmp_path / f"data{n}", train=60, test=20, seed=n)
        uris.append(ingest(root, settings.store_dir, fingerprint(root),
                           dataset_key=f"key{n}").dataset_uri)
    golden, past, current, loose, blocked, approved = uris
    pinned.pin(settings.store_dir, golden, pinned.CHOSEN)
    store = ChampionStore(r, str(settings.model_repo.resolve()))
    assert store.replace(0, Champion(1, "/m/1", "cnn", 0.8, "d1", past, "run1", generation=1))
    assert store.replace(1, Champion(2, "/m/2", "cnn", 0.9, "d2", current, "run2", generation=2))
    # a run the data gate blocked waits for an approval, which trains on its very dataset
    record.save(r, {"run_id": "run3", "status": "blocked", "dataset_uri": blocked}, time.time())
    validate.remember_approved(r, approved)  # later validations count its images as known

    dry = cli("cache", "gc", "--grace", "0", "--kind", "ingestion", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert ("kept 5 dataset(s), 10 unit(s) (never collected: the pinned evaluation set key0 and "
            "2 champion dataset(s) and 1 dataset(s) of blocked runs awaiting approval and "
            "1 approved dataset(s))") in " ".join(dry.stdout.split())
    done = _json(cli("cache", "gc", "--grace", "0", "--kind", "ingestion", "--json"))
    assert done["removed_datasets"] == [loose] and done["kept_datasets"] == 5
    assert done["protected_datasets"] == {golden: "the pinned evaluation set",
                                          past: "a champion's dataset",
                                          current: "a champion's dataset",
                                          blocked: "a blocked run's dataset",
                                          approved: "an approved dataset"}
    assert all(Path(uri, "metadata.json").is_file()
               for uri in (golden, past, current, blocked, approved))
