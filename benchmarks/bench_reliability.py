"""Faults injected into real processes; what was lost, duplicated or let in.

1. Model server, 32 concurrent decompression bombs (20,000 x 20,000 PNG, 390 kB each) with a
   normal request sent meanwhile: answers, peak memory above idle, the normal request's time.
2. Selector (``retrain select serve``) SIGKILLed right after answering 202 to N candidates,
   then started again: candidates sent, decisions made, lost, duplicated.
3. The same selector sent a stranger's model (outside the runs folder) and a forged test
   split: answered, loaded, promoted.
4. A service stopped with SIGTERM and one SIGKILLed: embedded redis-server left running.

Run: ``.venv/bin/python benchmarks/bench_reliability.py`` (about a minute).
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

import httpx

from _common import ROOT, free_port, heading, line

sys.path.insert(0, str(ROOT))
from tests.bombs import png_bomb  # noqa: E402

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
                             "--port", str(port)], env=_env(work / "serve-home"),
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
        alive = os.path.exists(f"/proc/{pid}") and "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        left.append(alive)
        line(f"redis-server after {how.name}", "still running" if alive else "gone")
    ROWS.append(("select serve SIGTERM / SIGKILL", "-", "-", "-", "-",
                 f"{sum(left)} redis left"))


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-reliability-"))
    try:
        model = _model(work)
        bombs(work, model)
        selector_kill(work, model)
        strangers(work, model)
        redis_orphans(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    heading("summary")
    print(f"  {'fault injected':<32} {'time':>7} {'events sent':>20} {'lost':>5} "
          f"{'dup.':>5} {'memory / outcome':>18}")
    for row in ROWS:
        print(f"  {row[0]:<32} {row[1]:>7} {row[2]:>20} {row[3]:>5} {row[4]:>5} {row[5]:>18}")


if __name__ == "__main__":
    main()
