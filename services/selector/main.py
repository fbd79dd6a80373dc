"""The selector, composed: one entry that ``retrain select``, ``retrain run``, the local stack
and the container all call.

``build_selector`` wires the champion record, the promotion backend the settings choose
(local model repository, or an InferenceService through the Kubernetes API), the evaluator
and the champion policy; ``serve`` runs it as a service (``POST /events`` and the Redis stream) with the live guard
beside it (``build_guard``); ``rollback`` brings the previous champion back.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from core.errors import ConfigurationError
from core.http import serve_forever
from core.redis_store import open_redis
from core.settings import MODEL_NAME, Settings
from core.supervise import Supervisor
from events import Event, EventType
from events.dedup import Deduplicator
from events.sinks import STREAM, RedisStreamSink
from events.streams import StreamConsumer
from services.selector.admission import Admission
from services.selector.app import create_app
from services.selector.backends import LocalBackend, PromotionBackend
from services.selector.champion import ChampionStore
from services.selector.errors import SelectorError
from services.selector.guard import Guard, Window
from services.selector.guard_rules import GuardThresholds
from services.selector.live import MetricsSource, UrlSource
from services.selector.policy import ChampionPolicy
from services.selector.scores import LazyEvaluator
from services.selector.service import Selector

log = logging.getLogger(__name__)
JUDGED = (EventType.MODEL_TRAINED, EventType.TRAINING_FAILED)  # what the selector acts on


def champion_policy(settings: Settings) -> ChampionPolicy:
    """The champion policy and promotion gate the settings choose (``RETRAIN_MIN_IMPROVEMENT``,
    ``RETRAIN_PROMOTION_PINNED_TOLERANCE``, ``RETRAIN_PROMOTION_MAX_CLASS_DROP``, rounds)."""
    return ChampionPolicy(settings.min_improvement, settings.round_quorum,
                          settings.round_deadline_seconds,
                          pinned_tolerance=settings.promotion_pinned_tolerance,
                          max_class_drop=settings.promotion_max_class_drop)


def promotion_backend(settings: Settings) -> PromotionBackend:
    """The backend ``RETRAIN_PROMOTION_BACKEND`` names, configured from the settings."""
    if settings.promotion_backend == "local":
        return LocalBackend(settings.model_repo, MODEL_NAME, lambda _version: None)
    from dataclasses import replace as with_changes

    from services.selector.kserve import KServeBackend, Rollout, kube_client

    thresholds = GuardThresholds.from_settings(settings)
    if "kserve_canary_max_error_rate" in settings.model_fields_set:  # the old name, still honoured
        log.warning("RETRAIN_KSERVE_CANARY_MAX_ERROR_RATE is deprecated: read as "
                    "RETRAIN_GUARD_MAX_ERROR_RATE_INCREASE")
        thresholds = with_changes(thresholds,
                                  max_error_rate_increase=settings.kserve_canary_max_error_rate)
    if ("kserve_canary_max_p99_ms" in settings.model_fields_set
            or settings.kserve_canary_metrics_url):
        log.warning("RETRAIN_KSERVE_CANARY_MAX_P99_MS and _METRICS_URL are ignored: a canary is "
                    "judged by the RETRAIN_GUARD_* rules on every predictor pod's metrics")
    try:  # before any cluster call: bad steps are a configuration error
        rollout = Rollout(settings.kserve_rollout, settings.kserve_canary_steps,
                          settings.kserve_canary_step_seconds, thresholds)
    except ValueError as exc:
        raise ConfigurationError(f"RETRAIN_KSERVE_*: {exc}") from None
    client = kube_client(settings.kube_api_url, settings.kube_token)
    metrics = cluster_metrics(settings, client.api_client) if rollout.strategy == "canary" else None
    return KServeBackend(client, settings.kserve_namespace, MODEL_NAME, settings.model_repo,
                         settings.kserve_storage_prefix, rollout, metrics)


def cluster_metrics(settings: Settings, api_client: Any,
                    clock: Callable[[], float] = time.monotonic) -> MetricsSource:
    """Every predictor pod's ``/metrics``, summed per version (the selector's Role lists
    pods): what a canary and the guard read on a cluster, never one pod."""
    from services.selector.pods import PodsSource, predictor_selector

    return PodsSource(api_client, settings.kserve_namespace, predictor_selector(MODEL_NAME),
                      clock=clock)


Keep = Callable[[redis.Redis, str], None]  # makes a served run's record permanent


def build_selector(settings: Settings, client: redis.Redis, emit: Callable[[Event], None],
                   backend: PromotionBackend | None = None, keep: Keep | None = None) -> Selector:
    """The selector as configured: the champion scoped to the model repository, ``backend``
    (default: the configured one), decisions handed to ``emit``; ``keep`` is told each run
    whose model it makes a champion version (the caller's run records: a lower floor than
    the selector's cannot name them)."""
    return Selector(ChampionStore(client, str(settings.model_repo.resolve())),
                    backend or promotion_backend(settings), LazyEvaluator(), emit,
                    champion_policy(settings), Admission(settings.runs_dir, settings.store_dir),
                    on_promoted=(lambda run_id: keep(client, run_id)) if keep else None)


def build_guard(settings: Settings, client: redis.Redis, selector: Selector,
                emit: Callable[[Event], None], metrics_url: str | None = None) -> Guard | None:
    """The live guard beside ``selector``, reading ``metrics_url`` (default
    ``RETRAIN_GUARD_METRICS_URL``, else this machine's model server), or, with
    ``RETRAIN_GUARD_SOURCE=pods`` (a cluster) or a KServe backend and no URL, every predictor
    pod summed per version; None with ``RETRAIN_GUARD=false``."""
    if not settings.guard:
        return None
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    url = metrics_url or settings.guard_metrics_url
    pods = settings.guard_source == "pods" or (url is None and settings.promotion_backend != "local")
    source: MetricsSource
    if pods:
        from core import kube

        source = cluster_metrics(settings, kube.api_client(settings.kube_api_url,
                                                           settings.kube_token), clock=time.time)
    else:
        source = UrlSource(url or f"http://{host}:{settings.serve_port}/metrics", clock=time.time)
    return Guard(ChampionStore(client, str(settings.model_repo.resolve())), selector.rollback,
                 emit, source, GuardThresholds.from_settings(settings),
                 Window(settings.guard_window_requests, settings.guard_window_seconds),
                 settings.guard_poll_seconds)


def judge_once(selector: Selector, dedup: Deduplicator) -> Callable[[Event], None]:
    """What the selector does with each entry of the stream: judge a ``model.trained`` it has
    not judged yet, and remember it only then. The stream acknowledges the entry after this
    returns; a selector that dies mid-judgement leaves it pending, and the next one to claim
    it judges it (marking it first would have skipped it as a duplicate)."""

    def judge(event: Event) -> None:
        if event.type not in JUDGED or dedup.seen(event):
            return
        selector.handle(event)
        dedup.remember(event)

    return judge


def serve(settings: Settings, *, stream: bool = True, keep: Keep | None = None) -> None:
    """``retrain select serve``: judge ``model.trained`` CloudEvents until stopped. They come
    from the Redis stream (trainers' ``--sink stream``) and from ``POST /events``, which
    appends what it accepts to the same stream; a consumer group judges each entry once.
    ``stream`` is kept for old command lines: the stream is always consumed."""
    with open_redis(settings.redis_url, settings.home) as handle:
        sink = RedisStreamSink(handle.client, STREAM, settings.stream_max_length)
        selector = build_selector(settings, handle.client, sink.send, keep=keep)
        stop = threading.Event()
        consumer = selector_consumer(handle.client, selector, settings)
        # a consumer that cannot go on stops the service (uvicorn ends on SIGTERM), which
        # then exits non-zero for its supervisor to restart
        supervisor = Supervisor(handle.client, lambda _why: os.kill(os.getpid(), signal.SIGTERM))
        supervisor.spawn("stream", lambda: consumer.run(stop))
        guard = build_guard(settings, handle.client, selector, sink.send)
        if guard is not None:
            supervisor.spawn("guard", lambda: guard.run(stop))
        receipts = Deduplicator(handle.client, settings.dedup_ttl_seconds, namespace="selector-http")
        try:
            serve_forever(create_app(selector, receipts, sink.send, settings.api_keys,
                                     supervisor.problem),
                          settings.host, settings.events_port, "selector")
        finally:
            stop.set()
            supervisor.join(timeout=10)  # before Redis goes: it may be embedded, stopping with us
        if supervisor.failure is not None:
            raise SelectorError(f"stopped: {supervisor.failure}")


def selector_consumer(client: redis.Redis, selector: Selector, settings: Settings) -> StreamConsumer:
    """The consumer of the selector group on the event stream that judges each candidate."""
    dedup = Deduplicator(client, settings.dedup_ttl_seconds, namespace="selector")
    selector.reconcile()  # a promotion a previous selector left half-done: finished or undone
    selector.resume_rounds()  # rounds a previous selector left open (deadlines re-armed)
    return StreamConsumer(client, STREAM, "selector", f"{socket.gethostname()}-{os.getpid()}",
                          judge_once(selector, dedup))


def rollback(settings: Settings, reason: str, keep: Keep | None = None) -> Event:
    """Serve the previous champion again (as the next version); returns the decision."""
    with open_redis(settings.redis_url, settings.home) as handle:
        selector = build_selector(settings, handle.client, RedisStreamSink(handle.client).send,
                                  keep=keep)
        selector.reconcile()  # roll back from a settled champion, never from a half promotion
        return selector.rollback(reason)
