"""``retrain``: one console script for every service and step. Imports are lazy so quick
commands (publish, status) start fast; TensorFlow loads only where it is needed."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import ValidationError
from rich.console import Console

from retrain.errors import ConfigurationError, RetrainError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Event-driven retraining for Fashion-MNIST.")
console = Console(stderr=True)


def _settings(**overrides: object):  # type: ignore[no-untyped-def]
    from retrain.settings import Settings

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"RETRAIN_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}"
                             for e in exc.errors())
        raise ConfigurationError(f"invalid configuration: {problems}") from None


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _params(models: str | None, epochs: int | None, steps: int | None, batch: int | None,
            lr: float | None, policy: str | None, workers: int | None = None,
            warm_start: bool | None = None):  # type: ignore[no-untyped-def]
    from events.payloads import RunParameters

    fields: dict[str, object] = {}
    if models is not None:
        fields["models"] = () if models.strip() == "none" else tuple(
            m.strip() for m in models.split(",") if m.strip())
    for name, value in (("epochs", epochs), ("steps_per_epoch", steps), ("batch_size", batch),
                        ("learning_rate", lr), ("cache_policy", policy), ("workers", workers),
                        ("warm_start", warm_start)):
        if value is not None:
            fields[name] = value
    try:
        return RunParameters(**fields)
    except ValidationError as exc:
        raise ConfigurationError("invalid run parameters: " + "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None


@app.command()
def demo(
    train_size: Annotated[int, typer.Option(help="stand-in training images")] = 20_000,
    test_size: Annotated[int, typer.Option(help="stand-in test images")] = 4_000,
    steps: Annotated[int, typer.Option(help="training steps per model")] = 150,
    increment: Annotated[int, typer.Option(help="images in the pushed increment")] = 1_000,
    verbose: bool = False,
) -> None:
    """The whole event chain on embedded defaults, end to end, with a timeline."""
    _logging(verbose)
    from retrain.demo import DemoConfig, run_demo

    run_demo(_settings(), DemoConfig(train_size, test_size, steps, increment), Console(width=150))


@app.command()
def up(
    data: Annotated[Optional[str], typer.Option(help="dataset folder to watch")] = None,
    verbose: bool = True,
) -> None:
    """Run the local stack (watcher, trigger, runner, selector, model server) until stopped."""
    _logging(verbose)
    import signal
    import threading

    from retrain.stack import LocalStack

    settings = _settings(data_uri=data)
    root = Path(settings.data_uri) if settings.data_uri else settings.data_dir
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with LocalStack(settings, data_root=root, console=console) as stack:
        console.print(f"watching {root}\nevents  {stack.events_url}\nserving {stack.serve_url}"
                      f"/v1/models/fashion-mnist:predict\nRedis   {stack.redis.url}\n"
                      "Ctrl-C to stop")
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass


@app.command()
def run(
    data: Annotated[str, typer.Option("--data", help="dataset folder (path or file://)")],
    models: Annotated[Optional[str], typer.Option(help="cnn,dropout,batch_norm or none")] = None,
    epochs: Optional[int] = None,
    steps_per_epoch: Optional[int] = None,
    batch_size: Optional[int] = None,
    learning_rate: Optional[float] = None,
    cache_policy: Annotated[Optional[str], typer.Option(help="exact, max-age=15m, min-change=0.1")] = None,
    workers: Annotated[Optional[int], typer.Option(help="worker processes per model (all-reduce)")] = None,
    warm_start: Annotated[Optional[bool], typer.Option("--warm-start/--no-warm-start", help="start from the champion's weights when it is the same variant")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    verbose: bool = False,
) -> None:
    """One workflow run on this machine, synchronously; promotes as each model finishes."""
    _logging(verbose)
    from retrain.oneshot import run_once

    params = _params(models, epochs, steps_per_epoch, batch_size, learning_rate, cache_policy,
                     workers, warm_start)
    summary = run_once(_settings(), data, params, console)
    if as_json:
        print(json.dumps(summary, default=str))
    else:
        from retrain.report import print_run

        print_run(Console(), summary)
    if summary["status"] != "succeeded":
        raise typer.Exit(1)


@app.command()
def publish(
    event_type: Annotated[str, typer.Argument(help="e.g. dev.retrain.dataset.updated")],
    data: Annotated[str, typer.Option("--data", help="the event's data as JSON")],
    sink: Annotated[Optional[str], typer.Option(help="URL to POST to (default: the local stack)")] = None,
    source: str = "retrain/cli",
    event_id: Annotated[Optional[str], typer.Option("--id")] = None,
    structured: bool = False,
) -> None:
    """Publish a CloudEvent by hand (to the local stack or an Argo Events webhook)."""
    from events import make_event
    from events.sinks import HttpSink

    settings = _settings()
    try:
        payload = json.loads(data)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"--data is not valid JSON: {exc}") from None
    event = make_event(event_type, payload, source=source, id=event_id)
    target = sink or settings.events_url
    HttpSink(target, mode="structured" if structured else "binary",
             api_key=settings.api_keys[0] if settings.api_keys else None).send(event)
    console.print(f"published {event.type.value} id={event.id} to {target}", soft_wrap=True)


@app.command()
def serve(
    model_repo: Annotated[Optional[Path], typer.Option(help="model repository root")] = None,
    port: Optional[int] = None,
) -> None:
    """Serve the newest model version (KServe V1 and Open Inference Protocol V2)."""
    _logging(True)
    from retrain.http import serve_forever
    from services.serving.app import create_app

    settings = _settings(serve_port=port)
    from services.serving.limits import RateLimiter

    limiter = RateLimiter(settings.rate_limit_anon, settings.rate_limit_keyed, settings.api_keys)
    serve_forever(create_app(model_repo or settings.model_repo, limiter=limiter,
                             batching=settings.batch_config()),
                  settings.host, settings.serve_port, "model server")


@app.command()
def watch(
    data: Annotated[Optional[str], typer.Option("--data", help="dataset folder to watch")] = None,
    sink: Annotated[Optional[str], typer.Option(help="where to send dataset.updated")] = None,
    port: Annotated[int, typer.Option(help="port of /healthz, /metrics, POST /rescan and the webhooks")] = 8081,
    structured: Annotated[bool, typer.Option(help="structured-mode CloudEvents (Argo Events webhooks)")] = False,
    git: Annotated[Optional[str], typer.Option("--git", help="a Git repository holding the dataset (clone URL)")] = None,
    git_branch: Annotated[str, typer.Option(help="the branch whose pushes count")] = "main",
    git_path: Annotated[str, typer.Option(help="the dataset folder inside the repository")] = ".",
    s3: Annotated[Optional[str], typer.Option("--s3", help="a bucket prefix holding the dataset: s3://BUCKET/PREFIX")] = None,
    s3_endpoint: Annotated[Optional[str], typer.Option(help="S3-compatible endpoint (MinIO)")] = None,
    s3_poll: Annotated[float, typer.Option(help="seconds between listings of the bucket (0: notifications only)")] = 60.0,
    verbose: bool = True,
) -> None:
    """Watch a dataset folder, a Git repository's folder (fetched on each push webhook) or an
    S3/MinIO bucket prefix (mirrored on each notification, and polled), and send one
    dataset.updated per settled change, through a durable outbox in Redis: a sink
    outage delays events, never loses them."""
    _logging(verbose)
    import hashlib
    import threading

    from events import make_event
    from events.outbox import Outbox
    from events.sinks import HttpSink
    from retrain.http import serve_forever
    from retrain.redis_store import open_redis
    from services.ingest_watcher.app import GitWebhooks
    from services.ingest_watcher.app import create_app as create_watcher_app
    from services.ingest_watcher.fetch import SourceFetcher
    from services.ingest_watcher.git import Clone, GitSource
    from services.ingest_watcher.watcher import DirectoryWatcher
    from workflows.steps import resolve_root

    settings = _settings()
    if sum(x is not None for x in (data, git, s3)) != 1:
        raise ConfigurationError("give exactly one of --data DIR, --git URL and --s3 s3://BUCKET/PREFIX")
    clone = mirror = None
    if git is not None:
        try:
            source = GitSource(git, git_branch, git_path)
        except ValueError as exc:
            raise ConfigurationError(f"--git-path: {exc}") from None
        tag = hashlib.sha256(f"{git}#{git_branch}".encode()).hexdigest()[:12]
        clone = Clone(source, settings.home / "git" / tag)
        root = clone.dataset_root
    elif s3 is not None:
        import boto3

        from services.ingest_watcher.s3 import BucketMirror, BucketSource

        try:
            bucket_source = BucketSource.parse(s3, s3_endpoint)
        except ValueError as exc:
            raise ConfigurationError(f"--s3: {exc}") from None
        tag = hashlib.sha256(bucket_source.uri.encode()).hexdigest()[:12]
        mirror = BucketMirror(boto3.client("s3", endpoint_url=s3_endpoint), bucket_source,
                              settings.home / "s3" / tag / "data", settings.watch_settle)
        root = mirror.folder
    else:
        root = resolve_root(data)
    api_key = settings.api_keys[0] if settings.api_keys else None
    with open_redis(settings.redis_url, settings.home) as handle:
        scope = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
        outbox = Outbox(handle.client, HttpSink(sink or settings.events_url, attempts=1,
                                                mode="structured" if structured else "binary",
                                                api_key=api_key), f"watcher:{scope}").start()
        watcher = DirectoryWatcher(root, outbox, handle.client, settings.home / "watcher",
                                   interval=settings.watch_interval, settle=settings.watch_settle)
        hooks, bucket_hooks, stop, threads = None, None, threading.Event(), []
        if mirror is not None:
            from services.ingest_watcher.app import BucketWebhooks
            from services.ingest_watcher.s3 import Poller

            jobs = Outbox(handle.client, SourceFetcher(mirror.sync, watcher), f"s3:{tag}").start()

            def request_sync(trigger: str = "s3") -> None:
                jobs.put(make_event("dataset.updated", {"uri": mirror.source.uri, "trigger": trigger},
                                    source="retrain/watcher/poll"))

            request_sync()  # catch up with the bucket on start
            bucket_hooks = BucketWebhooks(mirror.source, jobs, settings.s3_webhook_token)
            if s3_poll > 0:
                threads.append(threading.Thread(target=Poller(mirror, request_sync, s3_poll).run,
                                                args=(stop,), name="bucket-poller", daemon=True))
        elif clone is not None:
            jobs = Outbox(handle.client, SourceFetcher(clone.sync, watcher), f"git:{tag}").start()
            jobs.put(make_event("dataset.updated", {"uri": git, "trigger": "github"},
                                source="retrain/watcher/start"))  # catch up with the branch
            hooks = GitWebhooks(source, jobs, settings.github_webhook_secret,
                                settings.gitlab_webhook_token)
        else:
            threads.append(threading.Thread(target=watcher.run, args=(stop,), name="watcher",
                                            daemon=True))
        for thread in threads:
            thread.start()
        try:
            serve_forever(create_watcher_app(watcher, settings.api_keys, hooks, bucket_hooks),
                          settings.host, port, "watcher")
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=10)
            for hooked in (hooks, bucket_hooks):
                if hooked is not None:
                    hooked.jobs.stop()
            outbox.stop()


@app.command()
def ingest(
    data: Annotated[str, typer.Option("--data", help="dataset folder")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Fingerprint, check the cache and ingest a dataset (no training)."""
    from events.payloads import RunParameters
    from retrain.oneshot import run_once

    summary = run_once(_settings(), data, RunParameters(models=()), console)
    print(json.dumps(summary, default=str) if as_json else
          f"{summary['status']}: {summary['cache']['reason'] if summary['cache'] else ''} "
          f"-> {summary['dataset_uri']}")
    if summary["status"] != "succeeded":
        raise typer.Exit(1)


@app.command()
def train(
    model: Annotated[str, typer.Option(help="cnn, dropout or batch_norm")],
    dataset: Annotated[str, typer.Option(help="ingested dataset folder")],
    out: Annotated[Path, typer.Option(help="where to write the SavedModel")],
    epochs: int = 1,
    steps_per_epoch: Annotated[Optional[int], typer.Option(help="0 or unset: a full pass")] = None,
    batch_size: Annotated[int, typer.Option(help="per worker; the global batch is this x workers")] = 64,
    learning_rate: float = 1e-3,
    workers: Annotated[int, typer.Option(help="local worker processes on 127.0.0.1 (all-reduce)")] = 1,
    checkpoint_every: Annotated[Optional[int], typer.Option(help="steps between checkpoints (default: each epoch)")] = None,
    warm_start: Annotated[Optional[str], typer.Option(help="start from this exported model's weights if it is the same variant")] = None,
    run_id: str = "manual",
    sink: Annotated[Optional[str], typer.Option(help="send model.trained here")] = None,
) -> None:
    """Train one model variant and export it for serving (one process, --workers N local
    processes, or whatever cluster TF_CONFIG describes, as in a TFJob)."""
    problems = []
    if model not in ("cnn", "dropout", "batch_norm"):
        problems.append(f"--model {model!r}: expected cnn, dropout or batch_norm")
    if not (Path(dataset) / "metadata.json").is_file():
        problems.append(f"--dataset {dataset}: not an ingested dataset (no metadata.json)")
    for name, value, low in (("--epochs", epochs, 1), ("--batch-size", batch_size, 1),
                             ("--workers", workers, 1), ("--steps-per-epoch", steps_per_epoch, 0),
                             ("--checkpoint-every", checkpoint_every, 1)):
        if value is not None and value < low:
            problems.append(f"{name} {value}: must be at least {low}")
    if not 0 < learning_rate < 10:
        problems.append(f"--learning-rate {learning_rate}: must be between 0 and 10")
    if workers > 1 and os.environ.get("TF_CONFIG"):
        problems.append("--workers: TF_CONFIG already describes the cluster (as in a TFJob)")
    if problems:
        raise ConfigurationError("; ".join(problems))
    if workers > 1:
        from services.trainer.cluster import launch_local

        argv = ["train", "--model", model, "--dataset", dataset, "--out", str(out),
                "--epochs", str(epochs), "--batch-size", str(batch_size),
                "--learning-rate", repr(learning_rate), "--run-id", run_id]
        for name, value in (("--steps-per-epoch", steps_per_epoch),
                            ("--checkpoint-every", checkpoint_every),
                            ("--warm-start", warm_start), ("--sink", sink)):
            if value is not None:
                argv += [name, str(value)]
        launch_local(argv, workers, out.parent / "workers")
        result = json.loads((out.parent / "result.json").read_text())
        print(json.dumps({k: result[k] for k in ("model_uri", "val_accuracy", "seconds",
                                                 "workers", "resumed_from_step",
                                                 "weights_digest")}))
        return
    from events.sinks import HttpSink
    from services.trainer.main import run as run_training
    from services.trainer.train import TrainConfig

    settings = _settings()
    client = None
    if settings.redis_url:
        from retrain.redis_store import connect

        client = connect(settings.redis_url)
    config = TrainConfig(model, dataset, out, epochs, steps_per_epoch or None, batch_size,
                         learning_rate, checkpoint_every=checkpoint_every,
                         warm_start=warm_start)  # 0 steps per epoch: a full pass, as in the workflow
    result = run_training(config, run_id, client, HttpSink(sink) if sink else None)
    print(json.dumps({"model_uri": result.model_uri, "val_accuracy": result.val_accuracy,
                      "seconds": round(result.seconds, 2), "workers": result.workers,
                      "resumed_from_step": result.resumed_from_step,
                      "weights_digest": result.weights_digest}))


@app.command("seed")
def seed_command(
    out: Annotated[Path, typer.Option(help="dataset folder to write the four IDX files into")],
    train_size: Annotated[int, typer.Option(help="stand-in training images")] = 60_000,
    test_size: Annotated[int, typer.Option(help="stand-in test images")] = 10_000,
) -> None:
    """Write a dataset: the real Fashion-MNIST through tensorflow-datasets when it can be
    downloaded (unless RETRAIN_OFFLINE=1), else a labelled stand-in in the same format."""
    from workflows.seed import seed

    if train_size < 1 or test_size < 1:
        raise ConfigurationError("--train-size and --test-size must be at least 1")
    result = seed(out, offline=_settings().offline, train=train_size, test=test_size)
    console.print(result.note, soft_wrap=True)


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Runs, cache entries and the champion model."""
    from retrain.redis_store import open_redis
    from retrain.report import collect_status, print_status

    settings = _settings()
    with open_redis(settings.redis_url, settings.home) as handle:
        info = collect_status(handle.client, str(settings.model_repo.resolve()))
    if as_json:
        print(json.dumps(info, default=str))
    else:
        print_status(Console(), info)


from retrain.cli_cache import cache_app  # noqa: E402  (sub-commands register on the app)

from retrain.cli_step import step_app  # noqa: E402

app.add_typer(cache_app, name="cache")
app.add_typer(step_app, name="step")
select_app = typer.Typer(no_args_is_help=True, help="The selector (champion and promotion).")
app.add_typer(select_app, name="select")


def _selector(client, settings):  # type: ignore[no-untyped-def]
    """The selector as configured: champion scoped to the model repository, its backend, and
    decisions emitted to the local Redis stream."""
    from events.sinks import RedisStreamSink
    from services.selector.champion import ChampionStore
    from services.selector.evaluate import Evaluator
    from services.selector.service import Selector

    return Selector(ChampionStore(client, str(settings.model_repo.resolve())),
                    _promotion_backend(settings), Evaluator(), RedisStreamSink(client).send,
                    settings.champion_policy())


def _promotion_backend(settings):  # type: ignore[no-untyped-def]
    from retrain.errors import ConfigurationError
    from retrain.settings import MODEL_NAME
    from services.selector.backends import LocalBackend

    if settings.promotion_backend == "local":
        return LocalBackend(settings.model_repo, MODEL_NAME, lambda _version: None)
    from services.selector.kserve import KServeBackend, KubeApi, Rollout, ScrapedHealth

    try:
        rollout = Rollout(settings.kserve_rollout, settings.kserve_canary_steps,
                          settings.kserve_canary_step_seconds, settings.kserve_canary_max_error_rate,
                          settings.kserve_canary_max_p99_ms / 1000)
    except ValueError as exc:
        raise ConfigurationError(f"RETRAIN_KSERVE_*: {exc}") from None
    health = None
    if rollout.strategy == "canary":
        if not settings.kserve_canary_metrics_url:
            raise ConfigurationError("RETRAIN_KSERVE_ROLLOUT=canary needs RETRAIN_KSERVE_CANARY_METRICS_URL "
                              "(the canary's Prometheus /metrics) to judge its health")
        health = ScrapedHealth(settings.kserve_canary_metrics_url)
    api = (KubeApi(settings.kube_api_url, settings.kube_token) if settings.kube_api_url
           else KubeApi.in_cluster())
    return KServeBackend(api, settings.kserve_namespace, MODEL_NAME, settings.model_repo,
                         settings.kserve_storage_prefix, rollout, health)


@select_app.command("serve")
def select_serve(
    port: Annotated[Optional[int], typer.Option(help="events port (default RETRAIN_EVENTS_PORT)")] = None,
    stream: Annotated[bool, typer.Option(help="also consume model.trained from the Redis stream retrain:events")] = False,
) -> None:
    """Receive model.trained CloudEvents on POST /events (and, with --stream, from the Redis
    stream the local stack writes) and promote each candidate that beats the champion."""
    _logging(True)
    import os
    import socket
    import threading

    from events import EventType
    from events.dedup import Deduplicator
    from events.streams import StreamConsumer
    from retrain.http import serve_forever
    from retrain.redis_store import open_redis
    from services.selector.app import create_app as create_selector

    settings = _settings(events_port=port)
    with open_redis(settings.redis_url, settings.home) as handle:
        selector = _selector(handle.client, settings)
        dedup = Deduplicator(handle.client, settings.dedup_ttl_seconds, namespace="selector")
        stop = threading.Event()
        if stream:
            def judge(event):  # type: ignore[no-untyped-def]
                if event.type is EventType.MODEL_TRAINED and dedup.first_time(event):
                    selector.handle(event)

            consumer = StreamConsumer(handle.client, "retrain:events", "selector",
                                      f"{socket.gethostname()}-{os.getpid()}", judge)
            threading.Thread(target=consumer.run, args=(stop,), name="stream", daemon=True).start()
        try:
            serve_forever(create_selector(selector, dedup, settings.api_keys),
                          settings.host, settings.events_port, "selector")
        finally:
            stop.set()


@select_app.command("rollback")
def select_rollback(
    reason: Annotated[str, typer.Option(help="recorded in the audit log and the event")] = "rolled back by hand",
) -> None:
    """Serve the previous champion again (as the next version), atomically; the decision is
    audited and emitted as model.promoted."""
    from retrain.redis_store import open_redis

    settings = _settings()
    with open_redis(settings.redis_url, settings.home) as handle:
        decision = _selector(handle.client, settings).rollback(reason)
    console.print(decision.data.reason, highlight=False, soft_wrap=True)


workflow_app = typer.Typer(no_args_is_help=True, help="The Argo WorkflowTemplate (hera).")
app.add_typer(workflow_app, name="workflow")


@workflow_app.command("render")
def workflow_render(
    out: Annotated[Optional[Path], typer.Option(help="write here instead of standard output")] = None,
    image: Annotated[Optional[str], typer.Option(help="container image of every step")] = None,
    namespace: Annotated[Optional[str], typer.Option(help="namespace of the template")] = None,
) -> None:
    """Print the WorkflowTemplate generated with hera from the workflow's steps."""
    import dataclasses

    from workflows.definition import ClusterNames, render

    names = ClusterNames()
    names = dataclasses.replace(names, **{k: v for k, v in
                                          (("image", image), ("namespace", namespace)) if v})
    text = "# Generated by `retrain workflow render` (workflows/definition.py): `make manifests`.\n"
    text += render(names)
    if out is None:
        sys.stdout.write(text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        console.print(f"wrote {out}")


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    try:
        code = app(standalone_mode=False)  # click returns Exit codes instead of raising here
    except RetrainError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
