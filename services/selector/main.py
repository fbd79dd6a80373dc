"""The selector, composed: one entry that ``retrain select``, ``retrain run``, the local stack
and the container all call.

``build_selector`` wires the champion record, the promotion backend the settings choose
(local model repository, or an InferenceService through the Kubernetes API), the evaluator
and the champion policy; ``serve`` runs it as a service (``POST /events`` and, optionally,
the Redis stream); ``rollback`` brings the previous champion back.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable

import redis

from core.errors import ConfigurationError
from core.http import serve_forever
from core.redis_store import open_redis
from core.settings import MODEL_NAME, Settings
from events import Event, EventType
from events.dedup import Deduplicator
from events.sinks import RedisStreamSink
from events.streams import StreamConsumer
from services.selector.app import create_app
from services.selector.backends import LocalBackend, PromotionBackend
from services.selector.champion import ChampionStore
from services.selector.evaluate import Evaluator
from services.selector.policy import ChampionPolicy
from services.selector.service import Selector

STREAM = "retrain:events"


def champion_policy(settings: Settings) -> ChampionPolicy:
    return ChampionPolicy(settings.min_improvement, settings.round_quorum,
                          settings.round_deadline_seconds)


def promotion_backend(settings: Settings) -> PromotionBackend:
    """The backend ``RETRAIN_PROMOTION_BACKEND`` names, configured from the settings."""
    if settings.promotion_backend == "local":
        return LocalBackend(settings.model_repo, MODEL_NAME, lambda _version: None)
    from services.selector.kserve import KServeBackend, Rollout, ScrapedHealth, kube_client

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
    return KServeBackend(kube_client(settings.kube_api_url, settings.kube_token),
                         settings.kserve_namespace, MODEL_NAME, settings.model_repo,
                         settings.kserve_storage_prefix, rollout, health)


def build_selector(settings: Settings, client: redis.Redis, emit: Callable[[Event], None],
                   backend: PromotionBackend | None = None) -> Selector:
    """The selector as configured: the champion scoped to the model repository, ``backend``
    (default: the configured one), decisions handed to ``emit``."""
    return Selector(ChampionStore(client, str(settings.model_repo.resolve())),
                    backend or promotion_backend(settings), Evaluator(), emit,
                    champion_policy(settings))


def judge_once(selector: Selector, dedup: Deduplicator) -> Callable[[Event], None]:
    """What the selector does with each entry of the stream: judge a ``model.trained`` it has
    not judged yet, and remember it only then. The stream acknowledges the entry after this
    returns; a selector that dies mid-judgement leaves it pending, and the next one to claim
    it judges it (marking it first would have skipped it as a duplicate)."""

    def judge(event: Event) -> None:
        if event.type is not EventType.MODEL_TRAINED or dedup.seen(event):
            return
        selector.handle(event)
        dedup.remember(event)

    return judge


def serve(settings: Settings, *, stream: bool = False) -> None:
    """``retrain select serve``: judge ``model.trained`` CloudEvents from ``POST /events``
    (and with ``stream`` from the Redis stream the local stack writes) until stopped."""
    with open_redis(settings.redis_url, settings.home) as handle:
        selector = build_selector(settings, handle.client, RedisStreamSink(handle.client).send)
        dedup = Deduplicator(handle.client, settings.dedup_ttl_seconds, namespace="selector")
        stop = threading.Event()
        if stream:
            consumer = StreamConsumer(handle.client, STREAM, "selector",
                                      f"{socket.gethostname()}-{os.getpid()}",
                                      judge_once(selector, dedup))
            threading.Thread(target=consumer.run, args=(stop,), name="stream", daemon=True).start()
        try:
            serve_forever(create_app(selector, dedup, settings.api_keys),
                          settings.host, settings.events_port, "selector")
        finally:
            stop.set()


def rollback(settings: Settings, reason: str) -> Event:
    """Serve the previous champion again (as the next version); returns the decision."""
    with open_redis(settings.redis_url, settings.home) as handle:
        return build_selector(settings, handle.client,
                              RedisStreamSink(handle.client).send).rollback(reason)
