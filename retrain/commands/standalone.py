"""Each service on its own, as a container runs it: ``watch``, ``serve`` and ``train``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from core.settings import MODEL_TYPES
from retrain.commands.support import load_settings, setup_logging


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
    setup_logging(verbose)
    from services.ingest_watcher import main as watcher

    settings = load_settings()
    source = watcher.source_from_options(data, git, s3, git_branch=git_branch, git_path=git_path,
                                         s3_endpoint=s3_endpoint, s3_poll=s3_poll)
    watcher.run(settings, source, sink_url=sink, port=port, structured=structured)


def serve(
    model_repo: Annotated[Optional[Path], typer.Option(help="model repository root (versions under fashion-mnist/)")] = None,
    model_dir: Annotated[Optional[Path], typer.Option(help="the versions themselves, as KServe's storage initializer lays them out (/mnt/models)")] = None,
    port: Optional[int] = None,
    grpc_port: Annotated[Optional[int], typer.Option(help="the gRPC Open Inference Protocol's port (default 8001, RETRAIN_GRPC_PORT)")] = None,
) -> None:
    """Serve the newest model version (KServe V1 and Open Inference Protocol V2, over HTTP
    and gRPC)."""
    setup_logging(True)
    from core.errors import ConfigurationError
    from services.serving import main as serving

    if model_repo is not None and model_dir is not None:
        raise ConfigurationError("give --model-repo or --model-dir, not both")
    serving.run(load_settings(serve_port=port, grpc_port=grpc_port), model_repo, model_dir=model_dir)


def ui(port: Annotated[Optional[int], typer.Option(help="default 8070 (RETRAIN_UI_PORT)")] = None) -> None:
    """The pipeline's dashboard in the browser: runs, trainings, models, events, try it
    (read from Redis and the model repository alone)."""
    setup_logging(True)
    from dashboard.main import serve as serve_ui

    serve_ui(load_settings(ui_port=port))


def train(
    model: Annotated[str, typer.Option(help=", ".join(MODEL_TYPES))],
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
    round_size: Annotated[Optional[int], typer.Option(help="trainings the run started (the selector's round closes when all have ended)")] = None,
    seed: Annotated[int, typer.Option(help="the random seed: Python's, NumPy's, TensorFlow's and the shuffling's")] = 7,
    deterministic: Annotated[str, typer.Option(help="true: TensorFlow's op determinism, one thread per op, an ordered input pipeline (slower; the same training gives the same weights)")] = "false",
    verbose: Annotated[bool, typer.Option(help="TensorFlow's native start-up lines too")] = False,
) -> None:
    """Train one model variant and export it for serving (one process, --workers N local
    processes, or whatever cluster TF_CONFIG describes, as in a TFJob)."""
    if verbose:
        os.environ["RETRAIN_LOG_LEVEL"] = "debug"
    from core.errors import ConfigurationError
    from services.trainer import main as trainer
    from services.trainer.options import TrainOptions

    if deterministic not in ("true", "false"):
        raise ConfigurationError(f"--deterministic {deterministic}: expected true or false")
    options = TrainOptions(model=model, dataset=dataset, out=out, run_id=run_id, epochs=epochs,
                           steps_per_epoch=steps_per_epoch, batch_size=batch_size,
                           learning_rate=learning_rate, workers=workers,
                           checkpoint_every=checkpoint_every, warm_start=warm_start or None, sink=sink,
                           round_size=round_size, seed=seed,
                           deterministic=deterministic == "true")
    print(json.dumps(trainer.run(load_settings(), options)))
