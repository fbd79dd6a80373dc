"""Noticing dataset changes: fingerprint costs, b3sum, drop-to-event latency, webhook latency,
and duplicate storms.

    .venv/bin/python benchmarks/bench_events.py [--images 70000] [--drops 50] [--skip 2,4]

1. Re-fingerprinting an unchanged 70,000-image dataset (class folders of PNGs, the worst case:
   one file per image) vs fingerprinting it cold. Target < 1 %.
2. Cold hashing vs ``b3sum --num-threads 1`` (Debian's, installed with apt if missing) on the
   same files: the 70,000 PNGs, and the four IDX files of a 70,000-image dataset. Target ≥ 0.8x.
3. A file dropped into a watched folder → its dataset.updated, over 50 drops, measured from the
   moment the writes settle (the drop plus the debounce window) and from the drop itself.
   Target p99 ≤ 1 s after the debounce.
4. GitHub push webhooks at 50 requests/s for 10 s on loopback: answered within 20 ms p99 (the
   answer follows the outbox write; the fetch comes after).
5. 1,000 deliveries of the same change within about a second: the same push under 1,000
   delivery ids (webhooks), and the same CloudEvent (source + id) 1,000 times (``/events``):
   exactly one dataset.updated each.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from _common import ensure_tool, heading, line, loopback_redis, percentile, timed, verdict
from PIL import Image

from core.http import BackgroundServer, bind
from dataset.fingerprint import StatCache, fingerprint
from dataset.seed import CLASS_NAMES, generate, write_standin
from events import make_event
from events.codec import encode
from events.dedup import Deduplicator
from events.sinks import RedisStreamSink
from services.ingest_watcher.watcher import DirectoryWatcher
from workflows.trigger import create_app as create_trigger

SECRET = "bench-secret"


def write_pngs(root: Path, n: int) -> Path:
    images, labels = generate(n, 5)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        target = root / CLASS_NAMES[label] / f"{i:05d}.png"
        if i < len(CLASS_NAMES) or not target.parent.is_dir():
            target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, "L").save(target)
    return root


def rescan_vs_cold(root: Path, work: Path, label: str, target: bool) -> list[bool]:
    cache = work / f"cache-{uuid.uuid4().hex[:6]}.json"
    cold_seconds, cold = timed(lambda: fingerprint(root, StatCache(cache)))
    reps = [timed(lambda: fingerprint(root, StatCache(cache)))[0] for _ in range(5)]
    warm = float(np.median(reps))
    line(f"{label}: files", f"{len(cold.files):,}")
    line(f"{label}: cold (read and hash every file)", f"{cold_seconds * 1000:.1f} ms")
    line(f"{label}: unchanged (stat cache), median of 5", f"{warm * 1000:.2f} ms")
    if target:
        return [verdict(f"{label}: unchanged / cold", warm / cold_seconds, 0.01, unit="%")]
    line(f"{label}: unchanged / cold", f"{warm / cold_seconds * 100:.1f} %  (reported)")
    return []


def cold_vs_b3sum(b3sum: str, files: list[Path], label: str) -> bool:
    from dataset.fingerprint import hash_file

    def ours() -> None:
        for path in files:
            hash_file(path, path.stat().st_size)

    def theirs() -> None:
        # b3sum takes many paths at once; batches keep the command line within limits
        for start in range(0, len(files), 5000):
            subprocess.run([b3sum, "--num-threads", "1", *map(str, files[start:start + 5000])],
                           check=True, stdout=subprocess.DEVNULL)

    ours(), theirs()  # warm the page cache for both
    our_times = [timed(ours)[0] for _ in range(3)]
    b3_times = [timed(theirs)[0] for _ in range(3)]
    size = sum(p.stat().st_size for p in files)
    o, b = float(np.median(our_times)), float(np.median(b3_times))
    line(f"{label}: ours", f"{o:.3f} s  ({size / o / 1e6:.0f} MB/s)")
    line(f"{label}: b3sum --num-threads 1", f"{b:.3f} s  ({size / b / 1e6:.0f} MB/s)")
    return verdict(f"{label}: speed ours / b3sum", b / o, 0.8, lower_is_better=False)


def drop_latency(client, work: Path, drops: int, settle: float) -> list[bool]:
    heading(f"3. drop → dataset.updated, {drops} drops, debounce {settle:g} s, rescan every 30 s")
    root = work / "watched"
    write_standin(root, 1000, 200)
    stream = f"retrain:bench:drops:{uuid.uuid4().hex[:6]}"
    watcher = DirectoryWatcher(root, RedisStreamSink(client, stream), client, work / "wstate",
                               settle=settle, interval=30.0)
    time.sleep(settle)
    watcher.scan_once(), watcher.scan_once()
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    thread.start()
    while not watcher.notifications:
        time.sleep(0.01)
    after_settle, raw = [], []
    try:
        for n in range(drops):
            before = watcher.emitted
            target = root / "increments" / f"d{n:03d}" / "Bag" / "0.png"
            target.parent.mkdir(parents=True)
            dropped = time.monotonic()
            target.write_bytes(os.urandom(300))
            while watcher.emitted == before:
                if time.monotonic() - dropped > 30:
                    raise SystemExit(f"drop {n} produced no event")
                time.sleep(0.002)
            latency = time.monotonic() - dropped
            raw.append(latency)
            after_settle.append(max(0.0, latency - settle))
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join()
    line("drop → event, p50 / p99", f"{percentile(raw, 50) * 1000:.0f} / {percentile(raw, 99) * 1000:.0f} ms")
    line("after the debounce window, p50 / p99",
         f"{percentile(after_settle, 50) * 1000:.0f} / {percentile(after_settle, 99) * 1000:.0f} ms")
    ok = percentile(after_settle, 99) <= 1.0
    line("target: p99 ≤ 1 s after the writes settle", "PASS" if ok else "MISS")
    return [ok]


def _upstream(work: Path) -> tuple[Path, dict]:
    bare, tree = work / "origin.git", work / "tree"
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.com",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@example.com"}
    run = lambda *a, cwd=work: subprocess.run(["git", *a], cwd=cwd, check=True, env=env,  # noqa: E731
                                              capture_output=True, text=True).stdout.strip()
    run("init", "-q", "--bare", "-b", "main", str(bare))
    run("init", "-q", "-b", "main", str(tree))
    write_standin(tree / "data", 500, 100)
    run("add", "-A", cwd=tree)
    run("-c", "commit.gpgsign=false", "commit", "-q", "-m", "data", cwd=tree)
    run("push", "-q", str(bare), "HEAD:refs/heads/main", cwd=tree)
    after = run("rev-parse", "HEAD", cwd=tree)
    files = sorted(p.relative_to(tree).as_posix() for p in (tree / "data").rglob("*") if p.is_file())
    return bare, {"ref": "refs/heads/main", "before": "0" * 40, "after": after,
                  "commits": [{"id": after, "added": files, "modified": [], "removed": []}]}


def _hey(hey: str, url: str, body: Path, n: int, headers: list[str], content_type: str) -> float:
    args = [hey, "-n", str(n), "-c", "50", "-m", "POST", "-T", content_type, "-D", str(body)]
    for header in headers:
        args += ["-H", header]
    started = time.perf_counter()
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    took = time.perf_counter() - started
    codes = dict(re.findall(r"\[(\d+)\]\s+(\d+) responses", out))
    line("answers", ", ".join(f"{n} x {c}" for c, n in codes.items()))
    return took


class Client:
    """A keep-alive connection through the standard library's http.client: the lightest
    Python client, so the figure is the server's (httpx adds 2-3 ms per request here)."""

    def __init__(self, url: str) -> None:
        import http.client
        from urllib.parse import urlparse

        parsed = urlparse(url)
        self.path = parsed.path
        self._conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)

    def post(self, payload: bytes) -> float:
        """One signed push delivery; returns its latency in seconds."""
        headers = {"X-GitHub-Event": "push", "X-GitHub-Delivery": str(uuid.uuid4()),
                   "Content-Type": "application/json", "X-Hub-Signature-256": "sha256=" + hmac.new(
                       SECRET.encode(), payload, hashlib.sha256).hexdigest()}
        started = time.perf_counter()
        self._conn.request("POST", self.path, body=payload, headers=headers)
        response = self._conn.getresponse()
        response.read()
        elapsed = time.perf_counter() - started
        if response.status != 202:
            raise SystemExit(f"webhook answered {response.status}")
        return elapsed


def webhooks(client, redis_url: str, work: Path, rate: float, seconds: float, storm: int) -> list[bool]:
    """The watcher runs as it would in production, ``retrain watch --git`` in its own process;
    this process sends the webhooks and receives the events."""
    received: list = []
    receiver = BackgroundServer(create_trigger(Deduplicator(client, 600, f"bench-{uuid.uuid4().hex[:6]}"),
                                               received.append), bind("127.0.0.1", 0, "receiver"),
                                "receiver").start()
    bare, push = _upstream(work)
    probe = bind("127.0.0.1", 0, "probe")
    port = probe.getsockname()[1]
    probe.close()
    env = {**os.environ, "RETRAIN_HOME": str(work / "watch-home"), "RETRAIN_REDIS_URL": redis_url,
           "RETRAIN_GITHUB_WEBHOOK_SECRET": SECRET}
    proc = subprocess.Popen([sys.executable, "-m", "retrain.cli", "watch", "--git", str(bare),
                             "--git-path", "data", "--sink", receiver.url + "/events",
                             "--port", str(port), "--no-verbose"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/webhooks/github"
    deadline = time.monotonic() + 60
    while not received:  # the watcher catches up with the branch on start
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit("the watcher did not start")
        time.sleep(0.1)
    payload = json.dumps(push).encode()
    results: list[bool] = []
    try:
        heading(f"4. GitHub push webhooks: {rate:g} requests/s for {seconds:g} s")
        latencies: list[float] = []
        http = Client(url)
        if True:
            for _ in range(10):
                http.post(payload)  # warm-up
            start = time.perf_counter()
            n = int(rate * seconds)
            for i in range(n):  # an open-loop schedule: request i leaves at start + i / rate
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                latencies.append(http.post(payload))
        line("requests answered", f"{len(latencies)} (202)")
        line("(the dataset was announced once at start; these pushes change nothing)", "")
        line("latency p50 / p99 / max", f"{percentile(latencies, 50) * 1000:.2f} / "
             f"{percentile(latencies, 99) * 1000:.2f} / {max(latencies) * 1000:.2f} ms")
        ok = percentile(latencies, 99) <= 0.020
        line("target: p99 ≤ 20 ms", "PASS" if ok else "MISS")
        results.append(ok)
        time.sleep(2.0)  # let the fetches the storm caused finish
        line("dataset.updated after all of them", str(len(received)), )

        heading(f"5. {storm} deliveries of the same change, hey -n {storm} -c 50")
        hey = ensure_tool("hey")
        body = work / "push.json"
        body.write_bytes(payload)
        signature = "sha256=" + hmac.new(SECRET.encode(), payload, hashlib.sha256).hexdigest()
        before = len(received)
        # no X-GitHub-Delivery: every one is a new delivery of the same push
        took = _hey(hey, url, body, storm, ["X-GitHub-Event: push", f"X-Hub-Signature-256: {signature}"],
                    "application/json")
        time.sleep(3.0)
        line(f"{storm} webhook deliveries of one push", f"in {took:.2f} s")
        line("new dataset.updated", str(len(received) - before))
        results.append(len(received) - before == 0)  # the data was announced once, at start

        dispatched: list = []
        trigger = BackgroundServer(create_trigger(Deduplicator(client, 600, f"storm-{uuid.uuid4().hex[:6]}"),
                                                  dispatched.append), bind("127.0.0.1", 0, "t"), "t").start()
        event = make_event("dataset.updated", {"uri": "/data/fm", "digest": "d" * 64},
                           source="bench/storm", id="the-same-change")
        _headers, event_body = encode(event, "structured")
        body.write_bytes(event_body)
        took = _hey(hey, trigger.url + "/events", body, storm, [], "application/cloudevents+json")
        trigger.stop()
        line(f"{storm} identical CloudEvents (source + id) to /events", f"in {took:.2f} s")
        line("dispatched", str(len(dispatched)))
        results.append(len(dispatched) == 1)
        ok = results[-1] and results[-2]
        line("target: exactly one dataset.updated per change", "PASS" if ok else "MISS")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        receiver.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=70_000)
    parser.add_argument("--drops", type=int, default=50)
    parser.add_argument("--settle", type=float, default=0.25, help="debounce window of section 3")
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--storm", type=int, default=1000)
    parser.add_argument("--skip", default="", help="comma-separated sections to skip")
    args = parser.parse_args()
    skip = {int(s) for s in args.skip.split(",") if s}
    results: list[bool] = []
    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp:
        work = Path(tmp)
        if skip.isdisjoint({1, 2}):
            test = args.images // 7
            write_standin(work / "idx", args.images - test, test)
            pngs_seconds, _ = timed(lambda: write_pngs(work / "pngs", args.images))
            print(f"wrote a {args.images:,}-image dataset as IDX files, and the same number of "
                  f"PNGs in class folders ({pngs_seconds:.0f} s)")
        if 1 not in skip:
            heading("1. re-fingerprint unchanged vs cold (page cache warm: the cost is ours)")
            results += rescan_vs_cold(work / "idx", work, "IDX layout", True)
            results += rescan_vs_cold(work / "pngs", work, "one PNG per image", False)
        if 2 not in skip:
            b3sum = ensure_tool("b3sum")
            heading("2. cold hashing vs b3sum --num-threads 1 (page cache warm on both sides)")
            pngs = sorted(p for p in (work / "pngs").rglob("*.png"))
            results.append(cold_vs_b3sum(b3sum, pngs, f"{len(pngs):,} PNGs"))
            idx_files = sorted(p for p in (work / "idx").rglob("*") if p.is_file())
            results.append(cold_vs_b3sum(b3sum, idx_files, "4 IDX files"))
        with loopback_redis(work / "redis") as (client, redis_url):
            if 3 not in skip:
                results += drop_latency(client, work, args.drops, args.settle)
            if skip.isdisjoint({4, 5}):
                results += webhooks(client, redis_url, work, args.rate, args.seconds, args.storm)
    print(f"\n{sum(results)} of {len(results)} targets met")


if __name__ == "__main__":
    main()
