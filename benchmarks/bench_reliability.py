"""Faults injected into real processes; what was lost, duplicated or let in.

1. Model server, 32 concurrent decompression bombs (20,000 x 20,000 PNG, 390 kB each) with a
   normal request sent meanwhile: answers, peak memory above idle, the normal request's time.
2. Selector (``retrain select serve``) SIGKILLed right after answering 202 to N candidates,
   then started again: candidates sent, decisions made, lost, duplicated.
3. The same selector sent a stranger's model (outside the runs folder) and a forged test
   split: answered, loaded, promoted.
4. A service stopped with SIGTERM and one SIGKILLed: embedded redis-server left running.
5. ``retrain up`` SIGKILLed while the first of three requested runs trains, then started
   again: runs lost or run twice, trainers left running, decisions duplicated.
6. Redis (a real redis-server, append-only file) stopped for 10 s under ``retrain up`` while a
   training runs, then started again: runs lost, decisions duplicated, /healthz meanwhile,
   time from Redis back to the stack healthy.

Run: ``.venv/bin/python benchmarks/bench_reliability.py`` (two to three minutes).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from _common import ROOT, free_port, heading, line

sys.path.insert(0, str(ROOT))
from tests.bombs import png_bomb  # noqa: E402
from tests.reliability.test_redis_outage import redis_server  # noqa: E402
from tests.reliability.test_runs import alive, children  # noqa: E402

PY = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else sys.executable
ROWS: list[tuple[str, str, str, str, str, str]] = []


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for text in status:
            if text.startswith("VmRSS:"):
                return int(text.split()[1]) * 1024
    return 0


def _wait_http(url: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} never answered")


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RETRAIN_REDIS_URL"}
    return {**env, "RETRAIN_HOME": str(home), "RETRAIN_OFFLINE": "1", **extra}


def _model(work: Path) -> Path:
    from services.trainer import export, models

    path = work / "exported"
    export.export(models.build("cnn"), path)
    return path


def bombs(work: Path, model: Path) -> None:
    heading("1. 32 concurrent decompression bombs at the model server")
    repo = work / "serve-home" / "models" / "fashion-mnist"
    shutil.copytree(model, repo / "1")
    port = free_port()
    proc = subprocess.Popen([PY, "-m", "retrain.cli", "serve", "--model-repo", str(repo.parent),
                             "--port", str(port), "--grpc-port", "0"], env=_env(work / "serve-home"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/v1/models/fashion-mnist:predict"
        _wait_http(f"http://127.0.0.1:{port}/v2/health/ready")
        import io

        from PIL import Image

        buffer = io.BytesIO()
        Image.new("L", (28, 28)).save(buffer, "PNG")
        good = {"instances": [{"image_bytes": {"b64": base64.b64encode(buffer.getvalue()).decode()}}]}
        bomb = {"instances": [{"image_bytes": {"b64": base64.b64encode(png_bomb()).decode()}}]}
        with httpx.Client(timeout=120) as client:
            for _ in range(20):
                client.post(url, json=good)
            idle = _rss(proc.pid)
            peak = [idle]
            done = threading.Event()

            def sample() -> None:
                while not done.is_set():
                    peak[0] = max(peak[0], _rss(proc.pid))
                    time.sleep(0.01)

            sampler = threading.Thread(target=sample)
            sampler.start()
            started = time.perf_counter()
            with ThreadPoolExecutor(32) as pool:
                futures = [pool.submit(client.post, url, json=bomb) for _ in range(32)]
                time.sleep(0.05)
                normal_started = time.perf_counter()
                normal = client.post(url, json=good)
                normal_ms = (time.perf_counter() - normal_started) * 1000
                codes = [f.result().status_code for f in futures]
            seconds = time.perf_counter() - started
            done.set()
            sampler.join()
        line("bomb answers", f"{codes.count(400)} x 400, {len(codes) - codes.count(400)} other")
        line("all 32 answered in", f"{seconds * 1000:.0f} ms")
        line("peak memory above idle", f"{(peak[0] - idle) / 2**20:.1f} MiB (target < 1024)")
        line("a normal request meanwhile", f"{normal.status_code} in {normal_ms:.1f} ms")
        ROWS.append(("32 bombs at /v1 predict", f"{seconds:.2f}s", "32 requests", "-", "-",
                     f"+{(peak[0] - idle) / 2**20:.0f} MiB"))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _project(home: Path, model: Path, count: int) -> tuple[list[dict[str, object]], str, str]:
    from dataset.fingerprint import fingerprint
    from dataset.ingest import ingest
    from tests.conftest import write_dataset

    root = write_dataset(home.parent / "data", train=300, test=200)
    ingested = ingest(root, home / "store", fingerprint(root), dataset_key="k")
    candidates = []
    for n in range(count):
        target = home / "runs" / f"run{n}" / "cnn" / "model"
        shutil.copytree(model, target)
        candidates.append({"run_id": f"run{n}", "model_type": "cnn", "model_uri": str(target),
                           "dataset_uri": ingested.dataset_uri, "dataset_digest": ingested.digest,
                           "val_accuracy": 0.5, "val_loss": 1.0, "seconds": 1.0})
    return candidates, ingested.dataset_uri, ingested.digest


def _post(url: str, data: dict[str, object], event_id: str) -> int:
    headers = {"ce-specversion": "1.0", "ce-type": "dev.retrain.model.trained",
               "ce-source": "bench/trainer", "ce-id": event_id,
               "content-type": "application/json"}
    return httpx.post(url, content=json.dumps(data), headers=headers, timeout=30).status_code


def _start_selector(home: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([PY, "-m", "retrain.cli", "select", "serve", "--port", str(port)],
                            env=_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_http(f"http://127.0.0.1:{port}/healthz")
    return proc


def _audit(home: Path) -> list[dict[str, object]]:
    """The selector's audit log (sharing its embedded Redis while it runs)."""
    from core.redis_store import open_redis
    from services.selector.champion import ChampionStore

    with open_redis(None, home) as handle:
        return ChampionStore(handle.client, str((home / "models").resolve())).decisions()


def selector_kill(work: Path, model: Path, count: int = 8) -> None:
    heading(f"2. selector SIGKILLed after 202 to {count} candidates, then restarted")
    home = work / "sel-home"
    candidates, _uri, _digest = _project(home, model, count)
    port = free_port()
    proc = _start_selector(home, port)
    url = f"http://127.0.0.1:{port}/events"
    started = time.perf_counter()
    codes = [_post(url, c, f"{c['run_id']}/cnn") for c in candidates]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc = _start_selector(home, port)
    try:
        # everything is re-sent once more, as a sender unsure of its first try would
        resent = [_post(url, c, f"{c['run_id']}/cnn") for c in candidates]
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            judged = {(d["run_id"], d["model_type"]) for d in _audit(home)}
            if len(judged) >= count:
                break
            time.sleep(0.5)
        seconds = time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    audit = [d for d in _audit(home) if d["type"] != "refused"]
    keys = [(d["run_id"], d["model_type"]) for d in audit]
    lost = count - len(set(keys))
    duplicated = len(keys) - len(set(keys))
    line("answers before the kill", f"{codes.count(202)} x 202")
    line("answers to the re-sends", f"{resent.count(202)} x 202")
    line("decisions / lost / duplicated", f"{len(keys)} / {lost} / {duplicated}")
    line("all judged within", f"{seconds:.1f} s")
    ROWS.append(("selector SIGKILL after 202s", f"{seconds:.1f}s", f"{count} (+{count} re-sent)",
                 str(lost), str(duplicated), "-"))


def strangers(work: Path, model: Path) -> None:
    heading("3. a stranger's model and a forged test split")
    home = work / "guard-home"
    [ours], dataset_uri, digest = _project(home, model, 1)
    crafted = work / "attacker" / "model"
    shutil.copytree(model, crafted)
    forged = work / "attacker" / "split"
    shutil.copytree(dataset_uri, forged)
    port = free_port()
    proc = _start_selector(home, port)
    try:
        url = f"http://127.0.0.1:{port}/events"
        outside = _post(url, {**ours, "model_uri": str(crafted)}, "evil-1")
        split = _post(url, {**ours, "dataset_uri": str(forged)}, "evil-2")
        time.sleep(2)
        audit = _audit(home)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    promoted = [d for d in audit if d["type"] == "model.promoted"]
    line("model outside the runs folder", f"HTTP {outside}")
    line("test split outside the store", f"HTTP {split}")
    line("refusals audited / promoted", f"{sum(d['type'] == 'refused' for d in audit)} / {len(promoted)}")
    ROWS.append(("stranger's model, forged split", "-", "2", "-", "-",
                 f"{len(promoted)} promoted"))


def redis_orphans(work: Path) -> None:
    heading("4. embedded redis-server after SIGTERM and SIGKILL")
    left = []
    for how in (signal.SIGTERM, signal.SIGKILL):
        home = work / f"orphan-{how.name}"
        port = free_port()
        proc = _start_selector(home, port)
        pid = json.loads((home / "redis" / "server.json").read_text())["pid"]
        proc.send_signal(how)
        proc.wait(timeout=60)
        time.sleep(1.0)
        running = alive(pid)
        left.append(running)
        line(f"redis-server after {how.name}", "still running" if running else "gone")
    ROWS.append(("select serve SIGTERM / SIGKILL", "-", "-", "-", "-",
                 f"{sum(left)} redis left"))


def _up(home: Path, redis_url: str, events_port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([PY, "-m", "retrain.cli", "up"],
                            env=_env(home, RETRAIN_REDIS_URL=redis_url,
                                     RETRAIN_EVENTS_PORT=str(events_port),
                                     RETRAIN_SERVE_PORT=str(free_port()), RETRAIN_GRPC_PORT="0",
                                     RETRAIN_UI_PORT="0"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_http(f"http://127.0.0.1:{events_port}/healthz")
    return proc


def _request_runs(events_port: int, data: Path, ids: list[str]) -> None:
    body = json.dumps({"uri": str(data), "parameters": {"models": ["cnn"], "epochs": 1,
                                                        "steps_per_epoch": 60, "batch_size": 16}})
    for event_id in ids:
        headers = {"ce-specversion": "1.0", "ce-type": "dev.retrain.training.requested",
                   "ce-source": "bench/reliability", "ce-id": event_id,
                   "content-type": "application/json"}
        code = httpx.post(f"http://127.0.0.1:{events_port}/events", content=body,
                          headers=headers, timeout=30).status_code
        assert code == 202, code


def _runs(client: Any) -> list[dict[str, Any]]:
    """Every run recorded, read through the record's owner."""
    from workflows import record

    return record.runs_since(client, 0)


def _training(client: Any) -> bool:
    """Whether a training is under way, as its progress says."""
    from services.trainer import progress

    found = progress.read_many(client, progress.trainings(client, 1000), points=False)
    return any(p.state == "training" for p in found.values())


def _outcome(client: object, home: Path, ids: list[str]) -> tuple[int, int, int]:
    """(runs lost, runs that succeeded twice, decisions duplicated) for the requested ids."""
    from services.selector.champion import ChampionStore

    succeeded = [r["event_id"] for r in _runs(client) if r["status"] == "succeeded"]
    lost = sum(succeeded.count(i) == 0 for i in ids)
    twice = sum(succeeded.count(i) > 1 for i in ids)
    decisions = [(d["run_id"], d["model_type"]) for d in
                 ChampionStore(client, str((home / "models").resolve())).decisions()  # type: ignore[arg-type]
                 if d["type"] != "refused"]
    return lost, twice, len(decisions) - len(set(decisions))


def _wait_runs(client: object, ids: list[str], seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done = {r["event_id"] for r in _runs(client) if r["status"] == "succeeded"}
        if done >= set(ids):
            return
        time.sleep(0.5)


def stack_kill(work: Path) -> None:
    import redis

    from tests.conftest import write_dataset

    heading("5. retrain up SIGKILLed mid-training, then started again")
    home = work / "up-kill"
    data = write_dataset(work / "up-kill-data", train=300, test=100)
    port, events_port = free_port(), free_port()
    server = redis_server(port, work / "up-kill-redis")
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    ids = [f"kill-{n}" for n in range(3)]
    try:
        proc = _up(home, url, events_port)
        _request_runs(events_port, data, ids)
        while not _training(client):
            time.sleep(0.1)
        trainers = children(proc.pid)
        started = time.perf_counter()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(1.0)
        orphans = sum(alive(pid) for pid in trainers)
        proc = _up(home, url, events_port)
        try:
            _wait_runs(client, ids)
            seconds = time.perf_counter() - started
            lost, twice, duplicated = _outcome(client, home, ids)
            closed = [r for r in _runs(client) if str(r.get("error", "")).startswith("interrupted")]
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    finally:
        server.terminate()
        server.wait()
    line("trainers left running after the kill", f"{orphans} of {len(trainers)}")
    line("interrupted runs closed and resumed", str(len(closed)))
    line("runs lost / run twice", f"{lost} / {twice}")
    line("decisions duplicated", str(duplicated))
    line("all requested runs done within", f"{seconds:.1f} s of the kill")
    ROWS.append(("retrain up SIGKILL mid-training", f"{seconds:.1f}s", f"{len(ids)} runs",
                 str(lost), str(duplicated), f"{orphans} orphans"))


def redis_restart(work: Path) -> None:
    import redis

    from tests.conftest import write_dataset

    heading("6. Redis stopped for 10 s under retrain up mid-training")
    home = work / "up-redis"
    data = write_dataset(work / "up-redis-data", train=300, test=100)
    port, events_port = free_port(), free_port()
    folder = work / "up-redis-redis"
    server = redis_server(port, folder)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    ids = [f"outage-{n}" for n in range(3)]
    health = f"http://127.0.0.1:{events_port}/healthz"
    proc = _up(home, url, events_port)
    try:
        _request_runs(events_port, data, ids)
        while not _training(client):
            time.sleep(0.1)
        server.terminate()
        server.wait()
        codes = set()
        outage_end = time.monotonic() + 10
        while time.monotonic() < outage_end:
            try:
                codes.add(httpx.get(health, timeout=5).status_code)
            except httpx.HTTPError:
                codes.add(0)
            time.sleep(0.5)
        server = redis_server(port, folder)
        back = time.perf_counter()
        while httpx.get(health, timeout=10).status_code != 200:
            time.sleep(0.1)
        healthy_after = time.perf_counter() - back
        _wait_runs(client, ids)
        seconds = time.perf_counter() - back
        lost, twice, duplicated = _outcome(client, home, ids)
        still_up = proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        server.terminate()
        server.wait()
    line("/healthz while Redis was away", ", ".join(str(c) for c in sorted(codes)))
    line("healthy again after Redis came back", f"{healthy_after:.1f} s")
    line("retrain up still running", "yes" if still_up else "NO")
    line("runs lost / run twice", f"{lost} / {twice}")
    line("decisions duplicated", str(duplicated))
    line("all requested runs done within", f"{seconds:.1f} s of Redis back")
    ROWS.append(("Redis down 10 s under retrain up", f"{seconds:.1f}s", f"{len(ids)} runs",
                 str(lost), str(duplicated), "alive" if still_up else "DIED"))


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-reliability-"))
    try:
        model = _model(work)
        bombs(work, model)
        selector_kill(work, model)
        strangers(work, model)
        redis_orphans(work)
        stack_kill(work)
        redis_restart(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    heading("summary")
    print(f"  {'fault injected':<32} {'time':>7} {'events sent':>20} {'lost':>5} "
          f"{'dup.':>5} {'memory / outcome':>18}")
    for row in ROWS:
        print(f"  {row[0]:<32} {row[1]:>7} {row[2]:>20} {row[3]:>5} {row[4]:>5} {row[5]:>18}")


if __name__ == "__main__":
    main()
