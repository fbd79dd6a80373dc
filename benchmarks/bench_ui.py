"""The dashboard's data at scale (issue: a live pipeline dashboard).

    .venv/bin/python benchmarks/bench_ui.py [--runs 10000] [--requests 500]

Fills a loopback Redis with ``--runs`` run records as the runner writes them (five steps,
three models each), three audited decisions per run and a champion history, serves the
dashboard on 127.0.0.1 (uvicorn, as ``retrain ui`` does) and times ``GET /api/overview``
(the overview page's data) and ``GET /api/runs/<id>``: p50/p99 of ``--requests`` requests,
at 10 runs and at ``--runs`` runs in the same run. Target: overview p99 < 50 ms at 10,000.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import httpx
from _common import heading, line, loopback_redis, percentile, verdict

from core.http import BackgroundServer, bind
from dashboard.app import create_app
from services.selector.champion import Champion, ChampionStore
from workflows import record

MODELS = ("cnn", "dropout", "batch_norm")


def fill(client, first: int, count: int, repo: str) -> None:
    store = ChampionStore(client, repo)
    now = time.time()
    with client.pipeline(transaction=False) as pipe:
        for n in range(first, first + count):
            run_id = f"run-{n:06d}"
            started = now - (first + count - n) * 60
            steps = [{"name": name, "status": "succeeded", "seconds": 0.1,
                      "started_at": started, "ended_at": started + 0.1}
                     for name in ("fingerprint", "check_cache", "ingest")]
            steps += [{"name": f"train:{m}", "status": "succeeded", "seconds": 20.0,
                       "started_at": started, "ended_at": started + 20, "val_accuracy": 0.8,
                       "reason": f"miss: no {m} trained on digest 164b8b37… with these "
                                 "parameters in the cache"} for m in MODELS]
            summary = {"run_id": run_id, "trigger": "dataset.updated/watcher", "status": "succeeded",
                       "started_at": started, "seconds": 21.0, "data": "/data/fashion-mnist",
                       "parameters": {"models": list(MODELS)}, "steps": steps,
                       "models": {m: {"status": "trained", "seconds": 20.0, "val_accuracy": 0.8,
                                      "model_uri": f"/runs/{run_id}/{m}/model"} for m in MODELS},
                       "cache": {"hit": False, "reason": "miss: new content", "key": "k" * 64},
                       "digest": "d" * 64, "dataset_uri": "/store/datasets/" + "k" * 64}
            record.save(pipe, summary, started_at=started)
            if n % 1000 == 0:
                pipe.execute()
        pipe.execute()
    for n in range(first, first + count):
        for m in MODELS:
            store.audit({"type": "model.rejected", "seconds": 0.01, "run_id": f"run-{n:06d}",
                         "model_type": m, "candidate_accuracy": 0.8, "champion_accuracy": 0.9,
                         "reason": "not better: 0.8000 vs champion 0.9000 (-0.1000)"})
    champion = store.get()
    generation = champion.generation if champion else 0
    for v in range(generation + 1, generation + 4):
        store.replace(v - 1, Champion(v, f"/models/fashion-mnist/{v}", "cnn", 0.8 + v / 1000,
                                      "d" * 64, "/store/datasets/k", f"run-{first:06d}", v))


def timings(url: str, path: str, n: int) -> list[float]:
    with httpx.Client(base_url=url, timeout=30) as http:
        http.get(path).raise_for_status()  # warm
        times = []
        for _ in range(n):
            started = time.perf_counter()
            answer = http.get(path)
            times.append((time.perf_counter() - started) * 1000)
            answer.raise_for_status()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-ui-") as tmp, \
            loopback_redis(Path(tmp) / "redis") as (client, _url):
        client.flushdb()
        repo = str(Path(tmp) / "models")
        server = BackgroundServer(create_app(client, repo), bind("127.0.0.1", 0, "dashboard"),
                                  "dashboard").start()
        try:
            measured = {}
            for total in (10, args.runs):
                kept = record.recent_runs(client, 0, 1).total
                fill(client, kept, total - kept, repo)
                page = record.recent_runs(client, 0, 1)
                heading(f"{page.total:,} runs, "
                        f"{len(ChampionStore(client, repo).decisions()):,} decisions in Redis")
                newest = page.runs[0]["run_id"]
                for label, path in (("GET /api/overview", "/api/overview"),
                                    (f"GET /api/runs/{newest}", f"/api/runs/{newest}"),
                                    ("GET / (the page)", "/")):
                    times = timings(server.url, path, args.requests)
                    measured[(total, label.split()[1])] = percentile(times, 99)
                    line(label, f"p50 {percentile(times, 50):.2f} ms, p99 {percentile(times, 99):.2f} ms")
            heading("ratios")
            small, big = measured[(10, "/api/overview")], measured[(args.runs, "/api/overview")]
            line(f"overview p99 at {args.runs:,} runs / at 10 runs", f"{big / small:.2f}x")
            results.append(verdict(f"overview p99 at {args.runs:,} runs", big, 50.0, "ms"))
        finally:
            server.stop()
    print(f"\n{sum(results)} of {len(results)} targets met")


if __name__ == "__main__":
    main()
