"""Serving benchmark: our model server vs kserve.ModelServer vs the HTTP ceiling (a bare
FastAPI endpoint parsing the same request and answering a constant) under hey, micro-batching
on vs off, promotions under load, and the time to the first served model.

The model servers run the same SavedModel on this machine, one after the other, with the book's
request ({"instances": [{"image_bytes": {"b64": PNG}}]}, one 28x28 image per request). Load is
Debian's ``hey`` (installed with apt if missing). kserve's server runs in ``.venv-kserve``
(created here on first use: the kserve SDK pins cloudevents<2).

    .venv/bin/python benchmarks/bench_serving.py [--seconds 10] [--reps 2] [--skip 3,4]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
from _common import ROOT, ensure_tool, free_port, heading, line, loopback_redis, median, verdict
from PIL import Image

KSERVE_VENV = ROOT / ".venv-kserve"
PREDICT = "/v1/models/fashion-mnist:predict"


# tools ------------------------------------------------------------------------------------------
def ensure_kserve_venv() -> Path:
    python = KSERVE_VENV / "bin" / "python"
    if not python.exists():
        print("creating .venv-kserve with the kserve SDK (about a minute) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(KSERVE_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "kserve>=0.14,<1"], check=True)
    # TensorFlow from our environment, after kserve's own packages (its cloudevents 1.x first)
    site = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = subprocess.run([sys.executable, "-c", "import site; print(site.getsitepackages()[0])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "zz_retrain_tensorflow.pth").write_text(ours + "\n")
    return python


@contextmanager
def process(args: list[str], url: str, env: dict[str, str] | None = None, timeout: float = 120):
    """A server process, ready when ``url`` answers 200."""
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(args, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})},
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise SystemExit(f"server did not start: {' '.join(args)}\n{log.read().decode()[-3000:]}")
            time.sleep(0.2)
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def our_server(repo: Path, port: int, batching: bool):
    env = {"RETRAIN_HOME": str(repo.parent / "home"), "RETRAIN_RATE_LIMIT_ANON": "0",
           "RETRAIN_SERVE_MAX_BATCH": "64" if batching else "1"}
    env.pop("RETRAIN_REDIS_URL", None)
    return process([sys.executable, "-m", "retrain.cli", "serve", "--model-repo", str(repo),
                    "--port", str(port), "--grpc-port", "0"], f"http://127.0.0.1:{port}/v2/health/ready", env)


def kserve_server(python: Path, model_dir: Path, port: int):
    return process([str(python), str(ROOT / "benchmarks" / "_kserve_server.py"), str(model_dir),
                    str(port)], f"http://127.0.0.1:{port}/v1/models/fashion-mnist")


def bare_server(port: int):
    """FastAPI + uvicorn (httptools, uvloop): the same JSON and base64 parsing, no model."""
    return process([sys.executable, str(ROOT / "benchmarks" / "_bare_server.py"), str(port)],
                   f"http://127.0.0.1:{port}/v2/health/ready")


def hey(binary: str, url: str, body: Path, concurrency: int, seconds: float) -> dict[str, float]:
    done = subprocess.run([binary, "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST",
                           "-T", "application/json", "-D", str(body), url],
                          capture_output=True, text=True, check=True)
    out = done.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%+ in ([\d.]+) secs", out)
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", out)}
    errors = sum(int(n) for n in re.findall(r"\[(\d+)\]\s+[^\n]*?\n", out.split("Error distribution:")[1])) \
        if "Error distribution:" in out else 0
    return {"rps": rps, "p99": float(p99.group(1)) if p99 else float("nan"),
            "ok": codes.get(200, 0), "failed": sum(n for c, n in codes.items() if c != 200) + errors}


def warm_up(binary: str, url: str, body: Path, limit: float = 60.0) -> None:
    """Load until the server is in its steady state: for ours, until the served version has
    been compiled for LiteRT (after 200 model calls, a second or two of compiling)."""
    metrics = url.split("/v1/")[0] + "/metrics"
    deadline = time.monotonic() + limit
    while True:
        hey(binary, url, body, 8, 2)
        try:
            text = httpx.get(metrics, timeout=5).text
        except httpx.HTTPError:
            return  # kserve's and the bare endpoint's metrics are elsewhere, or absent
        if "retrain_serving_model_compiled" not in text or \
                re.search(r"^retrain_serving_model_compiled 1", text, re.M) or time.monotonic() > deadline:
            return


# sections -------------------------------------------------------------------------------------
def body_file(work: Path) -> Path:
    buf = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(pixels, "L").save(buf, format="PNG")
    path = work / "request.json"
    path.write_text(json.dumps({"instances": [{"image_bytes": {"b64": base64.b64encode(buf.getvalue()).decode()}}]}))
    return path


def ours_vs_kserve(binary: str, python: Path, repo: Path, body: Path, seconds: float, reps: int) -> list[bool]:
    heading(f"1-2. our server vs kserve.ModelServer vs a bare endpoint, hey -z {seconds:g}s, "
            "the book's request")
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    sides = (("ours", lambda p: our_server(repo, p, True)),
             ("ours, batching off", lambda p: our_server(repo, p, False)),
             ("kserve.ModelServer", lambda p: kserve_server(python, repo / "fashion-mnist" / "1", p)),
             ("bare FastAPI, no model", bare_server))
    for rep in range(reps):
        for name, start in sides:
            port = free_port()
            with start(port):
                url = f"http://127.0.0.1:{port}{PREDICT}"
                warm_up(binary, url, body)
                for concurrency in (5, 32):
                    r = hey(binary, url, body, concurrency, seconds)
                    results.setdefault((name, concurrency), []).append(r)
                    line(f"{name}, c={concurrency} (rep {rep + 1})",
                         f"{r['rps']:8.1f} req/s   p99 {r['p99'] * 1000:7.1f} ms   "
                         f"{r['ok']} ok, {r['failed']} failed")

    def m(name: str, c: int, key: str) -> float:
        return median([r[key] for r in results[(name, c)]])

    print()
    for c in (5, 32):
        for name, _ in sides:
            line(f"median {name}, c={c}", f"{m(name, c, 'rps'):8.1f} req/s   p99 {m(name, c, 'p99') * 1000:7.1f} ms")
    failed = sum(r["failed"] for rs in results.values() for r in rs)
    line("failed requests, all runs", str(failed))
    print()
    print("  | server | c=5 req/s | c=5 p99 | c=32 req/s | c=32 p99 |")
    print("  | --- | --- | --- | --- | --- |")
    for name, _ in sides:
        print(f"  | {name} | {m(name, 5, 'rps'):,.0f} | {m(name, 5, 'p99') * 1000:.1f} ms "
              f"| {m(name, 32, 'rps'):,.0f} | {m(name, 32, 'p99') * 1000:.1f} ms |")
    print()
    return [
        verdict("req/s ours / bare endpoint, c=32",
                m("ours", 32, "rps") / m("bare FastAPI, no model", 32, "rps"), 0.5,
                lower_is_better=False),
        verdict("p99 ours, c=32 (ms)", m("ours", 32, "p99") * 1000, 50.0, unit="ms"),
        verdict("p99 ours, c=5 (ms)", m("ours", 5, "p99") * 1000, 5.0, unit="ms"),
        verdict("req/s ours / kserve, c=32", m("ours", 32, "rps") / m("kserve.ModelServer", 32, "rps"),
                2.0, lower_is_better=False),
        verdict("p99 ours / kserve, c=5", m("ours", 5, "p99") / m("kserve.ModelServer", 5, "p99"), 1.0),
        verdict("req/s batching on / off, c=32",
                m("ours", 32, "rps") / m("ours, batching off", 32, "rps"), 1.0, lower_is_better=False),
        failed == 0,
    ]


def promotions_under_load(binary: str, repo: Path, body: Path, saved: Path, seconds: float) -> list[bool]:
    from services.selector.backends import LocalBackend

    heading(f"3. three promotions during {seconds:g} s of load at c=32")
    backend = LocalBackend(repo, "fashion-mnist")  # the selector's publication path
    port = free_port()
    with our_server(repo, port, True):
        url = f"http://127.0.0.1:{port}{PREDICT}"
        outcome: dict[str, float] = {}
        load = threading.Thread(target=lambda: outcome.update(hey(binary, url, body, 32, seconds)))
        load.start()
        for n in range(3):
            time.sleep(seconds / 4)
            staged = backend.stage(str(saved), backend.next_version())
            backend.publish(staged)
            line(f"promotion {n + 1}", f"version {staged.version} published at {(n + 1) * seconds / 4:.1f} s")
        load.join()
        served = httpx.get(f"http://127.0.0.1:{port}/v1/models/fashion-mnist").json()["model_version"]
    line("requests", f"{outcome['ok']:.0f} ok, {outcome['failed']:.0f} failed, "
                     f"{outcome['rps']:.1f} req/s, p99 {outcome['p99'] * 1000:.1f} ms")
    line("version served at the end", served)
    ok = outcome["failed"] == 0 and served == str(backend.next_version() - 1)
    line("zero failed requests, last version served", "PASS" if ok else "MISS")
    return [ok]


def time_to_first_model(work: Path, fast_steps: int, slow_steps: int) -> list[bool]:
    from core.http import BackgroundServer, bind
    from dataset.fingerprint import fingerprint
    from dataset.ingest import ingest
    from dataset.seed import write_standin
    from events import EventType, make_event
    from events.payloads import ModelTrained
    from services.selector.backends import LocalBackend
    from services.selector.champion import ChampionStore
    from services.selector.evaluate import Evaluator
    from services.selector.service import Selector
    from services.serving.app import create_app

    heading(f"4. time to the first served model: trainings of {fast_steps} and {slow_steps} steps")
    root = work / "ttfm-data"
    write_standin(root, 6000, 1000)
    digest = fingerprint(root)
    dataset = ingest(root, work / "ttfm-store", digest, dataset_key="ttfm").dataset_uri
    repo = work / "ttfm-repo"
    app = create_app(repo, poll_seconds=5.0)  # promotions are told, not polled
    server = BackgroundServer(app, bind("127.0.0.1", 0, "model server"), "model-server").start()
    holder = app.state.holder
    first_served: list[float] = []

    def watch() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            while True:
                if client.get("/v1/models/fashion-mnist").status_code == 200:
                    first_served.append(time.monotonic())
                    return
                time.sleep(0.02)

    with loopback_redis(work / "ttfm-redis") as (client, _url):
        selector = Selector(ChampionStore(client, str(repo)),
                            LocalBackend(repo, "fashion-mnist", lambda _v: holder.refresh()),
                            Evaluator(), lambda e: None)
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        env = {**os.environ, "RETRAIN_HOME": str(work / "ttfm-home"), "TF_CPP_MIN_LOG_LEVEL": "3"}
        env.pop("RETRAIN_REDIS_URL", None)
        procs = {}
        started = time.monotonic()
        for model, steps in (("cnn", fast_steps), ("batch_norm", slow_steps)):
            out = work / f"ttfm-{model}" / "model"
            procs[model] = (out, subprocess.Popen(
                [sys.executable, "-m", "retrain.cli", "train", "--model", model, "--dataset", dataset,
                 "--out", str(out), "--steps-per-epoch", str(steps), "--batch-size", "64"],
                env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        ended: dict[str, float] = {}
        judges = []
        while len(ended) < len(procs):
            for model, (out, proc) in procs.items():
                if model not in ended and proc.poll() is not None:
                    ended[model] = time.monotonic()
                    if proc.returncode:
                        raise SystemExit(f"training {model} failed")
                    result = json.loads((out.parent / "result.json").read_text())
                    event = make_event(EventType.MODEL_TRAINED, ModelTrained(
                        run_id="ttfm", model_type=model, model_uri=result["model_uri"],
                        dataset_uri=dataset, dataset_digest=digest.digest,
                        val_accuracy=result["val_accuracy"], val_loss=result["val_loss"],
                        seconds=result["seconds"]), source="bench")
                    judge = threading.Thread(target=selector.handle, args=(event,))
                    judge.start()  # as the selector does: each model is judged on arrival
                    judges.append(judge)
            time.sleep(0.02)
        for judge in judges:
            judge.join()
        watcher.join(timeout=30)
    server.stop()
    first_end, last_end = min(ended.values()), max(ended.values())
    served = first_served[0] - first_end
    line("trainings ended after", ", ".join(f"{m} {t - started:.1f} s" for m, t in ended.items()))
    line("first model served after the first training's end", f"{served:.2f} s")
    line("waiting for the slowest would serve it at least", f"{last_end - first_end:.2f} s later")
    ok = served <= 2.0
    line("target: within 2 s of the first training's end", "PASS" if ok else "MISS")
    return [ok]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="hey duration per run")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--promotion-seconds", type=float, default=30.0)
    parser.add_argument("--fast-steps", type=int, default=60)
    parser.add_argument("--slow-steps", type=int, default=900)
    parser.add_argument("--skip", default="", help="comma-separated sections to skip (1, 3, 4)")
    args = parser.parse_args()
    skip = {int(s) for s in args.skip.split(",") if s}

    from services.trainer import export, models

    binary = ensure_tool("hey")
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        work = Path(tmp)
        repo = work / "repo"
        saved = work / "saved"
        export.export(models.build("cnn"), saved)
        shutil.copytree(saved, repo / "fashion-mnist" / "1")
        body = body_file(work)
        results: list[bool] = []
        if 1 not in skip:
            results += ours_vs_kserve(binary, ensure_kserve_venv(), repo, body, args.seconds, args.reps)
        if 3 not in skip:
            results += promotions_under_load(binary, repo, body, saved, args.promotion_seconds)
        if 4 not in skip:
            results += time_to_first_model(work, args.fast_steps, args.slow_steps)
        print(f"\n{sum(results)} of {len(results)} targets met")


if __name__ == "__main__":
    main()
