"""``retrain cache ls | explain | gc`` against a real Redis and a real ingestion."""

import json
import os
import subprocess
import sys

import pytest

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
    assert before["parts"]["code_version"] == "ingest-v1" and len(before["parts"]["digest"]) == 64
    assert _json(cli("cache", "ls", "--json")) == []  # explaining ran nothing

    run = _json(cli("ingest", "--data", str(root), "--json"))
    after = _json(cli("cache", "explain", "--data", str(root), "--json"))
    assert after["would_hit"] and after["key"] == before["key"] == run["cache"]["key"]
    assert after["dataset_uri"] == run["dataset_uri"]

    [entry] = _json(cli("cache", "ls", "--json"))
    assert entry["key"] == before["key"] and entry["hits"] == 0  # explain recorded no hit
    assert entry["records"] == {"train": 300, "test": 100} and entry["expires_in"] > 0

    kept = _json(cli("cache", "gc", "--grace", "0", "--json"))
    assert kept["removed_datasets"] == [] and kept["kept_datasets"] == 1

    import shutil

    shutil.rmtree(run["dataset_uri"])
    gone = _json(cli("cache", "gc", "--grace", "0", "--json"))
    assert gone["dropped_entries"] == [before["key"]] and len(gone["removed_units"]) == 2
    assert _json(cli("cache", "ls", "--json")) == []


def test_bad_input(cli, tmp_path):
    done = cli("cache", "explain", "--data", str(tmp_path / "nope"))
    assert done.returncode == 1 and "no such folder" in done.stderr
    done = cli("cache", "explain", "--data", str(tmp_path), "--cache-policy", "min-change=2")
    assert done.returncode == 2 and "min-change needs a fraction" in done.stderr
    done = cli("cache", "gc", "--grace", "-5")
    assert done.returncode == 2 and "--grace" in done.stderr
    for out in (done.stderr,):
        assert "Traceback" not in out
