"""The model server, composed: one entry that ``retrain serve``, the local stack and the
container all call. TensorFlow is imported when the first model version loads
(``start_tensorflow``: ``core.tf_start.configure``, Keras 2 and a quiet start, then its thread
pools), not before: a server with no version yet, ``retrain up``'s before its first
promotion, starts without it (3-4 s of CPU)."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from core.auth import ApiKeys
from core.http import bind, serve_forever
from core.http_writes import WaveWriteHttpTools
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
                  poll_seconds: float = 1.0, model_dir: Path | None = None,
                  tf_threads: int = 0) -> FastAPI:
    """The server over ``model_repo`` (default: the settings' repository), or over the
    versions directly under ``model_dir``, with the configured rate limits and batching;
    ``tf_threads``: TensorFlow's thread pools (``limit_tf_threads``), set when the first
    version loads. (The local stack builds its server here too: its process may have
    imported TensorFlow already, for a score; configuring twice does nothing.)"""
    from services.serving.app import create_app

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
                      version_stats=settings.serve_version_stats,
                      start_tensorflow=partial(start_tensorflow, tf_threads))


def start_tensorflow(threads: int) -> None:
    """(When the first version loads.) TensorFlow imported, quietly (``configure``), its
    thread pools limited to ``threads`` each before it runs anything."""
    configure()
    limit_tf_threads(threads)


def limit_tf_threads(threads: int) -> None:
    """TensorFlow's thread pools for a process that only serves: ``threads`` each (0 leaves
    TensorFlow's choice). Must run before TensorFlow runs anything. One is fastest here:
    a call is ~0.5 ms, and handing its ops between pool threads cost more than it shared,
    on cores the event loop and the clients also need (benchmarks/README.md)."""
    if threads == 0:
        return
    import tensorflow as tf  # after configure (start_tensorflow)

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
    serve_forever(create_server(settings, model_repo, model_dir=model_dir,
                                tf_threads=settings.serve_tf_threads),
                  settings.host, http, "model server", http=WaveWriteHttpTools)
