"""One training process (locally, or a pod of a TFJob): train, report progress, write the
result beside the model, emit model.trained or training.failed."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import redis

from core.errors import RetrainError
from events import Event, EventType, make_event
from events.payloads import ModelTrained, TrainingFailed
from events.sinks import Sink
from services.trainer.cluster import role_from_tf_config
from services.trainer.progress import ProgressWriter, progress_key
from services.trainer.train import TrainConfig, TrainResult, train

log = logging.getLogger(__name__)
SOURCE = "retrain/trainer"
RESULT_FILE = "result.json"


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
        result = train(config, report, role)
    except (RetrainError, OSError, ValueError) as exc:
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
        sink.send(trained_event(run_id, config.model_type, config.dataset_uri, result,
                                round_size))
    return result


def trained_event(run_id: str, model_type: str, dataset_uri: str, result: TrainResult,
                  round_size: int | None = None) -> Event:
    return make_event(
        EventType.MODEL_TRAINED,
        ModelTrained(
            run_id=run_id, model_type=model_type, model_uri=result.model_uri,
            dataset_uri=dataset_uri, dataset_digest=result.digest,
            val_accuracy=result.val_accuracy, val_loss=result.val_loss,
            seconds=round(result.seconds, 3), workers=result.workers, steps=result.steps,
            round_size=round_size,
        ),
        source=SOURCE,
        id=f"{run_id}/{model_type}/trained",
    )


def failed_event(run_id: str, model_type: str, reason: str,
                 round_size: int | None = None) -> Event:
    return make_event(
        EventType.TRAINING_FAILED,
        TrainingFailed(run_id=run_id, model_type=model_type, reason=reason[:2000],
                       round_size=round_size),
        source=SOURCE,
        id=f"{run_id}/{model_type}/failed",
    )


def read_result(out: Path) -> TrainResult | None:
    """The result a finished trainer process left beside its model, if it finished."""
    path = out.parent / RESULT_FILE
    return TrainResult(**json.loads(path.read_text())) if path.is_file() else None
