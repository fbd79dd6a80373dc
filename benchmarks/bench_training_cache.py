"""The training cache, side by side (issue: memoize every step).

    .venv/bin/python benchmarks/bench_training_cache.py [--train 20000 --test 4000] [--steps 150]

Prints, on a generated stand-in dataset, the demo's three variants and parameters:
  1. a whole ``retrain run`` (a fresh process: fingerprint, ingestion hit, three training
     hits, selection) on the same data and parameters ÷ the first, full run (ingestion, three
     trainings, selection). Target ≤ 0.05.
  2. the training-cache check a run makes per variant (the dataset's metadata, the key, the
     entry, the model's files hashed to verify them, the hit recorded): p50/p99 over 1,000
     checks on loopback Redis. Target p99 ≤ 5 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import heading, line, loopback_redis, median, percentile, timed, verdict

from core.settings import MODEL_TYPES
from core.cache_policy import TRAINING, Policy
from dataset.seed import write_standin
from events.payloads import RunParameters
from services.trainer.training_cache import training_cache
from workflows.fanout import Trainings
from workflows.training import Memo


def retrain_run(env: dict[str, str], data: Path, steps: int) -> tuple[float, dict]:
    """One whole ``retrain run`` as a user types it; its seconds and summary."""
    seconds, done = timed(lambda: subprocess.run(
        [sys.executable, "-m", "retrain.cli", "run", "--data", str(data), "--steps-per-epoch",
         str(steps), "--json"], env=env, capture_output=True, text=True, timeout=3600))
    if done.returncode != 0:
        raise SystemExit(f"retrain run failed:\n{done.stderr[-2000:]}")
    return seconds, json.loads(done.stdout.strip().splitlines()[-1])


def check_cost(client, summary: dict, steps: int, n: int) -> list[float]:
    """Milliseconds of ``n`` training-cache checks (each a verified hit)."""
    memo = Memo(training_cache(client, 3600), Policy.parse("exact", TRAINING))
    params = RunParameters(steps_per_epoch=steps)
    options = [Trainings.options("bench", params, m, summary["dataset_uri"], Path("-"))
               for m in MODEL_TYPES]
    times = []
    for i in range(n):
        started = time.perf_counter()
        check = memo.check(options[i % len(options)])
        times.append((time.perf_counter() - started) * 1000)
        assert check.decision.hit, check.decision.reason
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=20_000)
    parser.add_argument("--test", type=int, default=4_000)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--reruns", type=int, default=3)
    parser.add_argument("--checks", type=int, default=1_000)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-train-cache-") as tmp:
        work = Path(tmp)
        data = work / "data"
        write_standin(data, args.train, args.test)
        print(f"generated a {args.train + args.test:,}-image stand-in dataset under {data}")
        with loopback_redis(work / "redis") as (client, url):
            env = {**os.environ, "RETRAIN_HOME": str(work / "home"), "RETRAIN_REDIS_URL": url,
                   "RETRAIN_OFFLINE": "1"}
            heading(f"1. retrain run on the same data and parameters ({', '.join(MODEL_TYPES)}, "
                    f"{args.steps} steps each)")
            first, summary = retrain_run(env, data, args.steps)
            assert summary["cache"]["hit"] is False
            assert not any(m.get("cached") for m in summary["models"].values())
            line("first run: ingest, 3 trainings, selection", f"{first:7.2f} s")
            reruns = []
            for _ in range(args.reruns):
                seconds, again = retrain_run(env, data, args.steps)
                assert again["cache"]["hit"] is True, again["cache"]
                assert all(m.get("cached") for m in again["models"].values()), again["models"]
                assert len(again["decisions"]) == len(MODEL_TYPES), again["decisions"]
                reruns.append(seconds)
            rerun = median(reruns)
            line(f"same run again, median of {args.reruns} (all hits)", f"{rerun:7.2f} s  "
                 f"({', '.join(f'{s:.2f}' for s in reruns)})")
            for decision in again["decisions"]:
                line(f"  {decision['model_type']}", decision["reason"][:70])
            results.append(verdict("re-run / first run", rerun / first, 0.05))

            heading(f"2. the training-cache check, {args.checks:,} verified hits")
            times = check_cost(client, summary, args.steps, args.checks)
            line("check latency", f"p50 {percentile(times, 50):.2f} ms, "
                                  f"p99 {percentile(times, 99):.2f} ms")
            results.append(verdict("check p99", percentile(times, 99), 5.0, "ms"))
    print(f"\n{sum(results)} of {len(results)} targets met")


if __name__ == "__main__":
    main()
