"""One training process (locally, or a pod of a TFJob): train, report progress, write the
result beside the model, emit model.trained or training.failed.

TensorFlow is loaded by ``fit`` alone, when the learning starts: everything around it (the
role, progress, ``result.json``, the events) needs none."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import asdict, replace
from typing import Any

import redis

from core.errors import RetrainError
from core.tf_start import configure
from events.sinks import Sink
from services.trainer.cluster import Role, role_from_tf_config
from services.trainer.outcome import RESULT_FILE, failed_event, trained_event
from services.trainer.progress import ProgressWriter, progress_key
from services.trainer.spec import Progress, TrainConfig, TrainResult

log = logging.getLogger(__name__)


def fit(config: TrainConfig, report: Progress, role: Role) -> TrainResult:
    """The learning itself: train ``config.model_type`` and export it to ``config.out``.
    TensorFlow is configured here, before anything of the learning imports it; the seconds
    that takes are the result's ``import`` phase."""
    started = time.perf_counter()
    configure()
    from services.trainer.train import train

    imported = round(time.perf_counter() - started, 3)
    result = train(config, report, role)
    return replace(result, phases={"import": imported, **result.phases})


def run(
    config: TrainConfig,
    run_id: str,
    client: redis.Redis | None = None,
    sink: Sink | None = None,
    echo: bool = True,
    round_size: int | None = None,
) -> TrainResult:
    """Train; the chief (the only process when not distributed) reports progress, writes
    ``result.json`` and emits ``model.trained`` or ``training.failed`` (telling the selector
    the run's ``round_size`` when known)."""
    role = role_from_tf_config(os.environ.get("TF_CONFIG"))
    chief = role.is_chief
    progress = ProgressWriter(client if chief else None, progress_key(run_id, config.model_type))
    last_line = [0.0]

    def report(point: dict[str, Any]) -> None:
        progress.post({**point, "workers": role.workers, "at": round(time.time(), 3)})
        if echo and (time.monotonic() - last_line[0] > 5 or point["step"] == point["planned"]):
            last_line[0] = time.monotonic()
            print(f"[{config.model_type} {role.name}] step {point['step']}/{point['planned']} "
                  f"loss {point['loss']:.4f} acc {point['accuracy']:.4f} "
                  f"{point['examples_per_second']:.0f} ex/s", file=sys.stderr, flush=True)

    try:
        result = fit(config, report, role)
    except (RetrainError, OSError, ValueError, ImportError) as exc:  # ImportError: TensorFlow
        progress.end("failed", reason=str(exc))
        progress.close()
        if chief and sink is not None:
            sink.send(failed_event(run_id, config.model_type, str(exc), round_size))
        raise
    if not chief:
        return result
    (config.out.parent / RESULT_FILE).write_text(json.dumps(asdict(result), indent=1))
    progress.end("done", result=json.dumps(asdict(result)))
    progress.close()
    if sink is not None:
        sink.send(trained_event(run_id, config.model_type, config.dataset_uri, asdict(result),
                                round_size))
    return result
