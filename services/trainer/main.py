"""The trainer, composed: one entry that ``retrain train``, the local runner's child processes
and a TFJob's pods all call.

With ``workers > 1`` it launches that many local processes on 127.0.0.1 (each running this
same entry as one worker of the cluster its TF_CONFIG describes); otherwise it trains in
this process, reporting progress to Redis when ``RETRAIN_REDIS_URL`` is set and sending
``model.trained`` to ``options.sink`` when given: an HTTP endpoint, or (``stream``) the
Redis stream the selector consumes with a consumer group, written durably. Either is waited
for while it is away (up to 15 minutes: a restart, a rollout), so a finished model is never
trained again because the selector or Redis was down.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import ConfigurationError
from core.settings import Settings
from services.trainer.options import STREAM_SINK, TrainOptions

if TYPE_CHECKING:
    import redis

    from events.sinks import Sink

SINK_PATIENCE_SECONDS = 900.0  # an outage of Redis or the receiver a finished model waits out
STREAM_NEEDS_REDIS = ("--sink stream needs RETRAIN_REDIS_URL (the Redis whose stream the "
                      "selector reads)")
SUMMARY = ("model_uri", "val_accuracy", "seconds", "workers", "resumed_from_step", "weights_digest",
           "seed", "deterministic")


def run(settings: Settings, options: TrainOptions) -> dict[str, Any]:
    """Train as ``options`` say; returns the summary ``retrain train`` prints."""
    problems = options.problems(os.environ.get("TF_CONFIG"), settings.runs_dir)
    if options.sink == STREAM_SINK and not settings.redis_url:
        problems.append(STREAM_NEEDS_REDIS)
    if problems:  # all of them, before anything starts
        raise ConfigurationError("; ".join(problems))
    out = Path(options.out)
    if options.workers > 1:
        from services.trainer.cluster import launch_local
        from services.trainer.outcome import RESULT_FILE

        launch_local(options.single_process().argv(), options.workers, out.parent / "workers")
        result = json.loads((out.parent / RESULT_FILE).read_text())
        return {k: result[k] for k in SUMMARY}

    from core.redis_store import connect
    from services.trainer.process import run as run_process
    from services.trainer.spec import TrainConfig

    client = connect(settings.redis_url) if settings.redis_url else None
    sink = event_sink(settings, options.sink, client) if options.sink else None
    config = TrainConfig(options.model, options.dataset, out, options.epochs,
                         options.steps_per_epoch or None,  # 0: a full pass, as in the workflow
                         options.batch_size, options.learning_rate,
                         seed=options.seed, checkpoint_every=options.checkpoint_every,
                         warm_start=options.warm_start, deterministic=options.deterministic)
    trained = asdict(run_process(config, options.run_id, client, sink,
                                 round_size=options.round_size))
    return {**{k: trained[k] for k in SUMMARY}, "seconds": round(trained["seconds"], 2)}


def event_sink(settings: Settings, target: str, client: redis.Redis | None) -> Sink:
    """Where a training's outcome goes: ``stream`` (the selector's Redis stream) or an HTTP
    URL (presenting the API key), each waited for through an outage of up to 15 minutes."""
    from events.sinks import HttpSink, PatientSink, RedisStreamSink

    if target == STREAM_SINK:  # durable: the selector acknowledges after its decision
        if client is None:
            raise ConfigurationError(STREAM_NEEDS_REDIS)
        sink: Sink = RedisStreamSink(client, max_length=settings.stream_max_length)
    else:
        sink = HttpSink(target, api_key=settings.api_key)
    return PatientSink(sink, give_up_after=SINK_PATIENCE_SECONDS)
