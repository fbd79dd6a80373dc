"""The whole pipeline's commands: ``demo``, ``up``, ``run``, ``ingest``, ``status``, ``seed``
and ``publish``. Imports are lazy so quick commands start fast."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from core.errors import ConfigurationError
from core.settings import MODEL_TYPES
from retrain.commands.support import console, load_settings, run_parameters, setup_logging

BLOCKED = 3  # the exit code of a run, or a validation, the data gate blocked


def demo(
    train_size: Annotated[int, typer.Option(help="stand-in training images")] = 20_000,
    test_size: Annotated[int, typer.Option(help="stand-in test images")] = 4_000,
    steps: Annotated[int, typer.Option(help="training steps per model")] = 150,
    increment: Annotated[int, typer.Option(help="images in the pushed increment")] = 1_000,
    verbose: bool = False,
) -> None:
    """The whole event chain on embedded defaults, end to end, with a timeline."""
    setup_logging(verbose, native=verbose)
    from retrain.demo import DemoConfig, run_demo

    run_demo(load_settings(), DemoConfig(train_size, test_size, steps, increment),
             Console(width=min(Console().width, 100) if Console().is_terminal else 100))


def up(
    data: Annotated[Optional[str], typer.Option(help="dataset folder to watch")] = None,
    verbose: Annotated[bool, typer.Option(help="every component's log lines, and TensorFlow's")] = False,
) -> None:
    """Run the local stack (watcher, trigger, runner, selector, model server, dashboard)
    until stopped, printing one line for each change noticed, run, training and decision."""
    setup_logging(verbose, native=verbose, live=console)
    from retrain.stack import run_until_stopped

    run_until_stopped(load_settings(data_uri=data), console)


def run(
    data: Annotated[str, typer.Option("--data", help="dataset folder (path or file://)")],
    models: Annotated[Optional[str], typer.Option(help=f"{','.join(MODEL_TYPES)} or none")] = None,
    epochs: Optional[int] = None,
    steps_per_epoch: Optional[int] = None,
    batch_size: Optional[int] = None,
    learning_rate: Optional[float] = None,
    cache_policy: Annotated[Optional[str], typer.Option(help="exact, max-age=15m, min-change=0.1")] = None,
    workers: Annotated[Optional[int], typer.Option(help="worker processes per model (all-reduce)")] = None,
    warm_start: Annotated[Optional[bool], typer.Option("--warm-start/--no-warm-start", help="start from the champion's weights when it is the same variant")] = None,
    train_cache: Annotated[Optional[str], typer.Option(help="the training cache: exact (an identical training's model is reused), max-age=2h or off")] = None,
    force: Annotated[bool, typer.Option("--force", help="train every model again, whatever the training cache holds")] = False,
    validation: Annotated[Optional[str], typer.Option(help="the data gate: block (default), warn or off")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    verbose: bool = False,
) -> None:
    """One workflow run on this machine, synchronously; promotes as each model finishes.
    Exits 3 when the data gate blocks the run (no training starts), 1 when it fails, 0 when
    it is deferred (its data adds less than RETRAIN_MIN_CHANGE; --force trains anyway)."""
    setup_logging(verbose, native=verbose, live=console)
    from retrain.oneshot import run_once

    params = run_parameters(models, epochs, steps_per_epoch, batch_size, learning_rate,
                            cache_policy, workers, warm_start, train_cache, force or None,
                            validation)
    summary = run_once(load_settings(), data, params, console)
    if as_json:
        print(json.dumps(summary, default=str))
    else:
        from retrain.report import print_run

        print_run(Console(), summary)
    exit_for(summary["status"])


def exit_for(status: str) -> None:
    """A run's exit code: 0 succeeded (or deferred: too small a change, which is no
    failure), 3 blocked by the data gate, 1 anything else."""
    if status == "blocked":
        raise typer.Exit(BLOCKED)
    if status not in ("succeeded", "deferred"):
        raise typer.Exit(1)


def ingest(
    data: Annotated[str, typer.Option("--data", help="dataset folder")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Fingerprint, check the cache and ingest a dataset (no training)."""
    from events.payloads import RunParameters
    from retrain.oneshot import run_once

    summary = run_once(load_settings(), data, RunParameters(models=(), validation="off"), console)
    if as_json:
        print(json.dumps(summary, default=str))
    elif summary["status"] == "succeeded":
        print(f"{summary['status']}: {summary['cache']['reason'] if summary['cache'] else ''} "
              f"-> {summary['dataset_uri']}")
    else:  # the same account of what is wrong as `retrain run` gives
        from retrain.report import print_run

        print_run(Console(), summary)
    if summary["status"] != "succeeded":
        raise typer.Exit(1)


def seed(
    out: Annotated[Path, typer.Option(help="dataset folder to write the four IDX files into")],
    train_size: Annotated[int, typer.Option(help="stand-in training images")] = 60_000,
    test_size: Annotated[int, typer.Option(help="stand-in test images")] = 10_000,
) -> None:
    """Write a dataset: the real Fashion-MNIST through tensorflow-datasets when it can be
    downloaded (unless RETRAIN_OFFLINE=1), else a labelled stand-in in the same format."""
    from dataset.seed import seed as write_seed

    if train_size < 1 or test_size < 1:
        raise ConfigurationError("--train-size and --test-size must be at least 1")
    result = write_seed(out, offline=load_settings().offline, train=train_size, test=test_size)
    console.print(result.note, soft_wrap=True)


def status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Runs, cache entries and the champion model."""
    from core.redis_store import open_redis
    from retrain.report import collect_status, print_status

    settings = load_settings()
    with open_redis(settings.redis_url, settings.home) as handle:
        info = collect_status(handle.client, str(settings.model_repo.resolve()))
    if as_json:
        print(json.dumps(info, default=str))
    else:
        print_status(Console(), info)


def publish(
    event_type: Annotated[str, typer.Argument(help="e.g. dev.retrain.dataset.updated")],
    data: Annotated[str, typer.Option("--data", help="the event's data as JSON")],
    sink: Annotated[Optional[str], typer.Option(help="URL to POST to (default: the local stack)")] = None,
    source: str = "retrain/cli",
    event_id: Annotated[Optional[str], typer.Option("--id")] = None,
    structured: bool = False,
) -> None:
    """Publish a CloudEvent by hand (to the local stack or an Argo Events webhook)."""
    from retrain.publishing import publish_event

    event, target, duplicate = publish_event(load_settings(), event_type, data, sink=sink,
                                             source=source, event_id=event_id,
                                             structured=structured)
    if duplicate:
        console.print(f"not published: {target} already had {event.type.value} id={event.id} "
                      f"from {source} and dropped it as a duplicate (send another --id)",
                      soft_wrap=True, highlight=False)
        return
    console.print(f"published {event.type.value} id={event.id} to {target}", soft_wrap=True)
