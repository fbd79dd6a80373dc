"""The model server, composed: one entry that ``retrain serve``, the local stack and the
container all call. TensorFlow is configured here (``core.tf_start.configure``: Keras 2, a
quiet start), once, before anything imports it: the server's modules configure nothing."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from core.auth import ApiKeys
from core.http import bind, serve_forever
from core.settings import Settings
from core.tf_start import configure
from services.serving.batching import BatchConfig
from services.serving.limits import RateLimiter

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger(__name__)


def batch_config(settings: Settings) -> BatchConfig | None:
    """Micro-batching as configured; a batch of one turns it off."""
    if settings.serve_max_batch == 1:
        return None
    return BatchConfig(settings.serve_max_batch, settings.serve_batch_wait_ms / 1000)


def create_server(settings: Settings, model_repo: Path | None = None, *,
                  poll_seconds: float = 1.0, model_dir: Path | None = None) -> FastAPI:
    """The server over ``model_repo`` (default: the settings' repository), or over the
    versions directly under ``model_dir``, with the configured rate limits and batching.
    (The local stack builds its server here, in a process it did not configure for
    TensorFlow: configuring twice does nothing.)"""
    configure()
    from services.serving.app import create_app  # TensorFlow: after the ports are known free

    limiter = RateLimiter(settings.rate_limit_anon, settings.rate_limit_keyed,
                          ApiKeys(settings.api_keys))
    return create_app(model_repo or settings.model_repo, poll_seconds=poll_seconds,
                      limiter=limiter, batching=batch_config(settings), model_dir=model_dir,
                      max_queued=settings.serve_max_queued,
                      grpc=(settings.host, settings.grpc_port),
                      compile_after=settings.serve_compile_after or None,
                      # RETRAIN_SERVE_COMPILE_AFTER=0: never compiled, at load neither
                      compile_at_load=settings.serve_compile_at_load
                      and settings.serve_compile_after > 0,
                      version_stats=settings.serve_version_stats)


def limit_tf_threads(threads: int) -> None:
    """TensorFlow's thread pools for a process that only serves: ``threads`` each (0 leaves
    TensorFlow's choice). Must run before TensorFlow runs anything. One is fastest here:
    a call is ~0.5 ms, and handing its ops between pool threads cost more than it shared,
    on cores the event loop and the clients also need (benchmarks/README.md)."""
    if threads == 0:
        return
    import tensorflow as tf  # after configure (run)

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError as exc:  # TensorFlow already ran something in this process
        log.warning("TensorFlow's threads stay as they are: %s", exc)


def run(settings: Settings, model_repo: Path | None = None, *,
        model_dir: Path | None = None) -> None:
    """``retrain serve``: serve the newest model version on ``settings.serve_port`` until
    stopped (as KServe's predictor: ``model_dir=/mnt/models``), gRPC on ``grpc_port``."""
    # a taken port is said at once, before TensorFlow loads (seconds)
    http = bind(settings.host, settings.serve_port, "model server")
    if settings.grpc_port:
        bind(settings.host, settings.grpc_port, "model server (gRPC)").close()
    configure()  # before anything imports TensorFlow
    limit_tf_threads(settings.serve_tf_threads)
    serve_forever(create_server(settings, model_repo, model_dir=model_dir), settings.host,
                  http, "model server")
