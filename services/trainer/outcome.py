"""What a training ends with, as others see it: the ``result.json`` beside its model and the
``model.trained`` / ``training.failed`` events. No TensorFlow here: the runner, the cluster's
small wait and check steps and the trainer itself all use it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from events import Event, EventType, make_event
from events.payloads import ModelTrained, TrainingFailed

SOURCE = "retrain/trainer"
RESULT_FILE = "result.json"  # what a finished training leaves beside its model folder


def read_result(out: Path) -> dict[str, Any] | None:
    """The result (``TrainResult`` as JSON) a finished trainer left beside its model ``out``."""
    path = out.parent / RESULT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def trained_event(run_id: str, model_type: str, dataset_uri: str, result: dict[str, Any],
                  round_size: int | None = None, cached: bool = False) -> Event:
    """``model.trained`` for ``result`` (a fresh training's, or a cache hit's: then
    ``cached``, with the recorded metrics and no time spent)."""
    return make_event(
        EventType.MODEL_TRAINED,
        ModelTrained(
            run_id=run_id, model_type=model_type, model_uri=result["model_uri"],
            dataset_uri=dataset_uri, dataset_digest=result["digest"],
            val_accuracy=result["val_accuracy"], val_loss=result["val_loss"],
            seconds=0.0 if cached else round(result["seconds"], 3), workers=result["workers"],
            steps=result["steps"], round_size=round_size, cached=cached,
            weights_digest=result.get("weights_digest", ""),
            seed=result.get("seed"), deterministic=bool(result.get("deterministic")),
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
