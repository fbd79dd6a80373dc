"""``retrain demo``: the whole event chain on embedded defaults, in three stages.

1. data appears -> watcher -> dataset.updated -> run (miss, ingest, three trainings) ->
   each model judged as it finishes -> a prediction served over HTTP;
2. the same data published again by hand -> cache hits: ingestion skipped, and the three
   identical trainings not run again (their models reused, judged from memory);
3. an increment of PNG images pushed -> watcher -> only the increment ingested -> retraining
   -> promotion only if better.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from core import timeline
from core.errors import RetrainError
from core.settings import Settings
from events.payloads import RunParameters
from retrain.publishing import publish_event
from retrain.report import print_timeline
from retrain.stack import LocalStack
from workflows import record


@dataclass(frozen=True)
class DemoConfig:
    train_size: int = 20_000
    test_size: int = 4_000
    steps: int = 150
    increment: int = 1_000
    batch_size: int = 64
    timeout: float = 600.0


@dataclass(frozen=True)
class StageResult:
    run: dict[str, Any]
    decisions: list[dict[str, Any]]


class DemoError(RetrainError):
    pass


def _wait_for_run(stack: LocalStack, after: float, timeout: float) -> dict[str, Any]:
    """The first run that starts after ``after``, once it and all its model decisions are done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in record.runs_since(stack.redis.client, after):
            if run["status"] == "running":
                continue
            trained = [m for m, r in run["models"].items() if r["status"] == "trained"]
            decisions = [d for d in stack.champions.decisions() if d["run_id"] == run["run_id"]]
            if len(decisions) >= len(trained):
                return {**run, "decisions": decisions}
        time.sleep(0.3)
    raise DemoError(f"no run finished within {timeout:.0f}s")


def _predict(console: Console, stack: LocalStack, data_root: Path) -> dict[str, Any]:
    from PIL import Image
    if stack.champions.get() is None:
        raise DemoError("no model was promoted, so there is nothing to serve; see the run's "
                        "train.log files under the runs folder for why training failed")

    from dataset import idx
    from dataset.layout import BASE_FILES, CLASS_NAMES

    image = next(idx.iter_images(data_root / BASE_FILES["test"][0], batch=1))[0]
    label = int(idx.read_labels(data_root / BASE_FILES["test"][1])[0])
    buffer = io.BytesIO()
    Image.fromarray(image, "L").save(buffer, format="PNG")
    body = {"instances": [{"image_bytes": {"b64": base64.b64encode(buffer.getvalue()).decode()}}]}
    deadline = time.monotonic() + 30
    while True:
        response = httpx.post(f"{stack.serve_url}/v1/models/fashion-mnist:predict", json=body,
                              timeout=30)
        if response.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    response.raise_for_status()
    probs = response.json()["predictions"][0]
    predicted = max(range(10), key=lambda i: probs[i])
    version = response.headers.get("x-model-version")
    console.print(
        f"  POST /v1/models/fashion-mnist:predict (a PNG test image, true class "
        f"[bold]{CLASS_NAMES[label]}[/]) -> predicted [bold]{CLASS_NAMES[predicted]}[/] "
        f"p={probs[predicted]:.3f}, answered by model version {version}"
    )
    return {"predicted": predicted, "label": label, "version": version, "probabilities": probs}


def _stage_report(console: Console, run: dict[str, Any]) -> None:
    cache = run.get("cache") or {}
    console.print(f"  run {run['run_id']}: {run['status']} in {run.get('seconds', 0):.1f}s; "
                  f"cache {'HIT' if cache.get('hit') else 'MISS'} ({cache.get('reason')})")
    for step in run["steps"]:
        extra = f" val_acc={step['val_accuracy']:.4f}" if "val_accuracy" in step else ""
        if step.get("cached"):
            extra += f" ({step['reason']})"
        console.print(f"    {step['name']:<18} {step['status']:<10} {step['seconds']:7.2f}s{extra}")
    for d in run["decisions"]:
        console.print(f"    select {d['model_type']:<11} {d['type']:<9} {d['reason']}"
                      + (f" -> version {d['version']}" if d.get("version") else ""))


def run_demo(settings: Settings, config: DemoConfig, console: Console,
             while_up: Callable[[LocalStack], object] | None = None) -> dict[str, Any]:
    """Run the three stages; returns what happened (tests assert on it). ``while_up(stack)``,
    if given, is called after the last stage, before the stack stops (screenshots of its
    dashboard: scripts/screenshots.py)."""
    from dataset.seed import seed, write_png_increment

    if settings.data_uri:
        data_root = Path(settings.data_uri)
        home = settings.home
    else:
        home = settings.home / "demo"
        shutil.rmtree(home, ignore_errors=True)  # every demo starts from nothing
        data_root = home / "data" / "fashion-mnist"
    settings = settings.model_copy(update={"home": home})
    started = time.time()
    console.rule("[bold]retrain demo")
    console.print(f"state in {home.resolve()}")
    staging = home / "staging" / "fashion-mnist"
    doing = ("generating a labelled stand-in dataset (RETRAIN_OFFLINE=1)" if settings.offline
             else "trying to download the real Fashion-MNIST through tensorflow-datasets "
                  "(a stand-in is generated if it cannot be reached; RETRAIN_OFFLINE=1 skips this)")
    console.print(f"seeding: {doing}", highlight=False)
    with console.status("seeding the dataset…"):
        seeded = seed(staging, offline=settings.offline, train=config.train_size,
                      test=config.test_size)
    console.print(("[bold yellow]" if not seeded.real else "[green]") + seeded.note)
    params = RunParameters(epochs=1, steps_per_epoch=config.steps, batch_size=config.batch_size)
    result: dict[str, Any] = {"real_data": seeded.real}
    with LocalStack(settings, data_root=data_root, default_parameters=params,
                    console=console) as stack:
        console.print(f"stack up: dashboard {stack.ui_url} · events {stack.events_url}, model server {stack.serve_url}, "
                      f"Redis {'embedded' if stack.redis.embedded else stack.redis.shown}")

        console.rule("stage 1: data appears")
        t1 = time.time()
        data_root.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(data_root)  # the dataset appears in the watched folder at once
        run1 = _wait_for_run(stack, t1, config.timeout)
        _stage_report(console, run1)
        result["stage1"] = run1
        result["prediction"] = _predict(console, stack, data_root)

        console.rule("stage 2: the same data published again by hand")
        t2 = time.time()
        payload = json.dumps({"uri": str(data_root), "trigger": "manual"})
        console.print(f"  $ retrain publish dev.retrain.dataset.updated --data '{payload}'",
                      highlight=False)
        event, target, _duplicate = publish_event(settings, "dev.retrain.dataset.updated", payload,
                                      sink=stack.events_url)
        console.print(f"published {event.type.value} id={event.id} to {target}", soft_wrap=True)
        run2 = _wait_for_run(stack, t2, config.timeout)
        _stage_report(console, run2)
        result["stage2"] = run2

        console.rule("stage 3: a new increment of labelled images is pushed")
        t3 = time.time()
        folder = write_png_increment(data_root, "batch-0001", config.increment, seed=4242)
        console.print(f"  pushed {config.increment} PNG images into {folder.relative_to(data_root.parent)}")
        run3 = _wait_for_run(stack, t3, config.timeout)
        _stage_report(console, run3)
        result["stage3"] = run3
        result["prediction_after"] = _predict(console, stack, data_root)

        console.rule("timeline")
        print_timeline(console, timeline.read(stack.redis.client, since=started), started)
        champion = stack.champions.get()
        result["champion"] = champion.__dict__ if champion else None
        if while_up is not None:
            while_up(stack)
    console.print(f"[bold green]demo finished in {time.time() - started:.0f}s[/]; champion: "
                  f"version {champion.version if champion else '-'} "
                  f"({champion.model_type if champion else '-'})")
    return result
