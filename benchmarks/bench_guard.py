"""Live guard benchmark: what the per-version statistics cost the model server's hot path, and
(``_guard_rollback``, when present) the time from a version's first bad answer to its rollback.

1. The hot path: the model server started twice from scratch, with the per-version statistics
   (the default) and without (``RETRAIN_SERVE_VERSION_STATS=0``), the same SavedModel, each
   warmed to its steady state, then the same load (``hey``, the book's request, as
   ``bench_serving`` drives it) on one and the other in alternated rounds, so that what else
   the machine does hits both alike. Target: requests/s with ÷ without >= 0.95 at c=32 (the
   median of the rounds' ratios). Each server's CPU time per request (``/proc``) is printed
   too: on a busy machine the ratio it implies is steadier than the requests/s.

    .venv/bin/python benchmarks/bench_guard.py [--seconds 5] [--rounds 8] [--skip 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import ensure_tool, free_port, heading, line, median, verdict
from bench_serving import PREDICT, body_file, hey, process, warm_up

CONCURRENCY = 32


def served(repo: Path, port: int, statistics: bool):
    """``retrain serve`` over ``repo``, as ``bench_serving.our_server`` starts it, with the
    per-version statistics on or off."""
    env = {"RETRAIN_HOME": str(repo.parent / "home"), "RETRAIN_RATE_LIMIT_ANON": "0",
           "RETRAIN_SERVE_VERSION_STATS": "1" if statistics else "0"}
    return process([sys.executable, "-m", "retrain.cli", "serve", "--model-repo", str(repo),
                    "--port", str(port), "--grpc-port", "0"],
                   f"http://127.0.0.1:{port}/v2/health/ready", env)


def cpu_seconds(pid: int) -> float:
    """The CPU time a process has used (user and system, all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def counting_cost(n: int = 200_000, images: int = 1) -> float:
    """Seconds the per-version counting adds to one successful request of ``images`` images,
    measured in this process: what the data plane does more with the statistics on."""
    import numpy as np

    from services.serving.version_stats import VersionStats

    stats = VersionStats()
    probabilities = np.random.default_rng(0).random((images, 10)).astype(np.float32)
    started = time.perf_counter()
    for _ in range(n):
        stats.answered(1, 200, 0.004, probabilities)
        stats.executed(1)
    return (time.perf_counter() - started) / n


def hot_path(binary: str, repo: Path, body: Path, seconds: float, rounds: int) -> list[bool]:
    heading(f"1. the hot path with and without per-version statistics: {rounds} rounds of "
            f"hey -z {seconds:g}s -c {CONCURRENCY} on each, the book's request")
    results: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    ports = {True: free_port(), False: free_port()}
    urls = {s: f"http://127.0.0.1:{port}{PREDICT}" for s, port in ports.items()}
    with served(repo, ports[True], True) as on, served(repo, ports[False], False) as off:
        pids = {True: on.pid, False: off.pid}
        for url in urls.values():
            warm_up(binary, url, body)  # to the steady state: compiled for LiteRT
        for n in range(rounds):  # alternated, so the machine's drift hits both alike
            for statistics in ((True, False) if n % 2 == 0 else (False, True)):
                used = cpu_seconds(pids[statistics])
                r = hey(binary, urls[statistics], body, CONCURRENCY, seconds)
                r["cpu"] = (cpu_seconds(pids[statistics]) - used) / max(1, r["ok"] + r["failed"])
                results[statistics].append(r)
                line(f"statistics {'on ' if statistics else 'off'} (round {n + 1})",
                     f"{r['rps']:8.1f} req/s   p99 {r['p99'] * 1000:6.1f} ms   "
                     f"{r['cpu'] * 1e6:5.0f} µs CPU/request   {r['failed']} failed")
    rps = {s: median([r["rps"] for r in rs]) for s, rs in results.items()}
    p99 = {s: median([r["p99"] for r in rs]) for s, rs in results.items()}
    ratio = median([on["rps"] / off["rps"] for on, off in zip(results[True], results[False])])
    cpu = {s: median([r["cpu"] for r in rs]) for s, rs in results.items()}
    failed = sum(r["failed"] for rs in results.values() for r in rs)
    print()
    line("median, statistics on", f"{rps[True]:8.1f} req/s   p99 {p99[True] * 1000:6.1f} ms")
    line("median, statistics off", f"{rps[False]:8.1f} req/s   p99 {p99[False] * 1000:6.1f} ms")
    line("server CPU per request, on / off", f"{cpu[True] * 1e6:.0f} µs / {cpu[False] * 1e6:.0f} µs")
    added = counting_cost()
    line("the counting itself, per request (in-process)",
         f"{added * 1e6:.1f} µs: {added / cpu[False] * 100:.1f} % of the server's CPU per request")
    line("the counting of one 10,000-image answer (in-process)",
         f"{counting_cost(200, 10_000) * 1e6:.0f} µs (argmax and bincount outside the lock)")
    line("load average (1 min) at the end", Path("/proc/loadavg").read_text().split()[0])
    line("failed requests, all runs", str(failed))
    # the throughput a CPU-bound server would lose: less sensitive to what else the machine runs
    verdict("req/s on / off from CPU per request", cpu[False] / cpu[True], 0.95,
            lower_is_better=False)
    return [verdict(f"req/s on / off, c={CONCURRENCY} (median of rounds)", ratio, 0.95,
                    lower_is_better=False),
            failed == 0]


def rollback() -> list[bool]:
    """The rollback's timing, from ``_guard_rollback.section()`` once that module exists."""
    if importlib.util.find_spec("_guard_rollback") is None:
        heading("2. from the first bad answer to the rollback")
        line("not built yet", "benchmarks/_guard_rollback.py is missing")
        return []
    from _guard_rollback import section

    return list(section())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="hey duration per round")
    parser.add_argument("--rounds", type=int, default=8, help="rounds of load on each server")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip (1, 2)")
    args = parser.parse_args()
    skip = {int(s) for s in args.skip.split(",") if s}

    from services.trainer import export, models

    results: list[bool] = []
    if 1 not in skip:
        binary = ensure_tool("hey")
        with tempfile.TemporaryDirectory(prefix="bench-guard-") as tmp:
            work = Path(tmp)
            saved = export.export(models.build("cnn"), work / "saved")
            shutil.copytree(saved, work / "repo" / "fashion-mnist" / "1")
            results += hot_path(binary, work / "repo", body_file(work), args.seconds,
                                args.rounds)
    if 2 not in skip:
        results += rollback()
    print(f"\n{sum(results)} of {len(results)} targets met")


if __name__ == "__main__":
    main()
