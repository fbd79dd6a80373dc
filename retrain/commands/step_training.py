"""``retrain step check-training|create-training|wait-training|finish``: one model's training
on a cluster, as the WorkflowTemplate's ``train`` DAG runs it (check-training, then a TFJob on
a miss, then wait-training), with the run's record given each training's outcome
(``workflows.cluster_run``); and the Workflow's exit handler, which tells what a Workflow
that ended left unsaid. Every training that ends without a model is told to the selector as
``training.failed`` (the trainer's own id) by the step that saw it end, so its run's round
closes."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from retrain.commands.step import OutputsOption, emit_outputs, send_event
from retrain.commands.support import load_settings, setup_logging


def check_training(
    model: Annotated[str, typer.Option(help="the variant to train")],
    dataset_uri: Annotated[str, typer.Option(help="the ingested dataset")],
    out: Annotated[Path, typer.Option(help="where the TFJob would write the model")],
    warm_start: Annotated[str, typer.Option(help="the model to start from (\"\": none)")] = "",
    epochs: int = 1,
    steps_per_epoch: Annotated[int, typer.Option(help="0: a full pass")] = 0,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    workers: int = 1,
    train_cache: Annotated[str, typer.Option(help="exact, max-age=2h or off")] = "exact",
    force: Annotated[str, typer.Option(help="true: train whatever the cache holds")] = "false",
    deterministic: Annotated[str, typer.Option(help="true: the training runs with TensorFlow's op determinism (a key of its own)")] = "false",
    run_id: Annotated[Optional[str], typer.Option(help="the run (the Workflow's name): its record gets a hit's model, or why the check failed")] = None,
    round_size: Annotated[Optional[int], typer.Option(help="trainings the run started")] = None,
    sink: Annotated[Optional[str], typer.Option(help="where model.trained goes on a hit (stream or a URL)")] = None,
    outputs: OutputsOption = None,
) -> None:
    """Decide from the training cache whether this training must run (single flight: while
    another workflow trains the same key, wait for its model). A hit sends the recorded
    model's model.trained ("cached": true) to --sink and creates no TFJob, and with --run-id
    the run's record gets the model (its train step ``cached``). A miss holds the key's
    lease; the claim (``claim.json`` beside --out) lets wait-training renew it and record
    the TFJob's model.

    Outputs: hit (true|false), reason, key, model-uri."""
    from core.redis_store import open_redis
    from services.trainer.options import TrainOptions
    from services.trainer.outcome import trained_event
    from services.trainer.training_cache import TrainingEntry
    from workflows import cluster_run

    settings = load_settings()
    options = TrainOptions(model=model, dataset=dataset_uri, out=out, run_id=run_id or "manual",
                           epochs=epochs, steps_per_epoch=steps_per_epoch or None,
                           batch_size=batch_size, learning_rate=learning_rate, workers=workers,
                           warm_start=warm_start or None, deterministic=deterministic == "true")
    started, step = (time.perf_counter(), time.time()), cluster_run.training(model)
    with open_redis(settings.redis_url, settings.home) as handle:
        run = cluster_run.WorkflowRun(handle.client, run_id) if run_id else None
        try:
            check, got, reason = _claim_training(settings, handle.client, options, train_cache,
                                                 force == "true", dataset_uri)
        except Exception as exc:  # no TFJob follows: this is the training's outcome
            if sink and run_id:
                _tell_failure(settings, sink, run_id, model, f"check-training failed: {exc}",
                              round_size)
            if run is not None:
                cluster_run.training_failed(step, model, 0.0, f"check-training failed: {exc}")
                run.record(step, round(time.perf_counter() - started[0], 3), started[1])
            raise
        if isinstance(got, TrainingEntry):
            send_event(settings, sink, handle.client,
                        trained_event(run_id or "manual", model, dataset_uri, got.result(),
                                      round_size, cached=True))
            if run is not None:  # (a miss: the TFJob's outcome is the wait step's to record)
                cluster_run.cached_training(step, model, got, reason)
                run.record(step, round(time.perf_counter() - started[0], 3), started[1])
    hit = isinstance(got, TrainingEntry)
    emit_outputs({"hit": "true" if hit else "false", "reason": reason, "key": check.key,
                   "model-uri": got.model_uri if hit else str(out)}, outputs)


def _claim_training(settings: Any, client: Any, options: Any, train_cache: str, force: bool,
                    dataset_uri: str) -> tuple[Any, Any, str]:
    """The training cache's check, then the key's lease (a claim beside the model for the
    wait step) or the entry a concurrent run made meanwhile: (check, entry or lease, why)."""
    from core.cache_policy import TRAINING, Policy
    from services.trainer.training_cache import TrainingEntry, training_cache
    from workflows.training import Memo, save_claim

    memo = Memo(training_cache(client, settings.cache_ttl_seconds),
                Policy.parse(train_cache, TRAINING), force,
                int(settings.training_lease_seconds * 1000))
    try:
        check = memo.check(options)
        got: Any = check.decision.entry
        reason = check.decision.reason
        if got is None and memo.enabled:
            got = memo.wait(check, time.time(), timeout=8 * 3600)
            if isinstance(got, TrainingEntry):
                reason = "hit: trained by a concurrent run with the same key"
            else:
                save_claim(options.out.parent / "claim.json", check, got, dataset_uri)
    finally:
        memo.close()
    return check, got, reason


def wait_training(
    name: Annotated[str, typer.Option(help="the TFJob the train step created")],
    namespace: Annotated[str, typer.Option(help="its namespace")] = "retrain",
    timeout: Annotated[float, typer.Option(help="seconds before the job is deleted as stuck")] = 4 * 3600 + 600,
    poll: Annotated[float, typer.Option(help="seconds between looks at its conditions")] = 10.0,
    run_id: Annotated[Optional[str], typer.Option(help="the run the training belongs to")] = None,
    model: Annotated[Optional[str], typer.Option(help="the variant it trains")] = None,
    round_size: Annotated[Optional[int], typer.Option(help="trainings the run started")] = None,
    sink: Annotated[Optional[str], typer.Option(help="where training.failed goes when the job fails (stream or a URL)")] = None,
    claim: Annotated[Optional[Path], typer.Option(help="check-training's claim: renew its lease, record the model")] = None,
) -> None:
    """Wait for a TFJob's own Succeeded or Failed condition (exit 0 or 1); past --timeout the
    job and its pods are deleted and the step fails. With --sink (and --run-id, --model), a
    failed job is told to the selector as training.failed, so the run's round can close
    even when the trainer died too early or too hard to say it itself. With --run-id and
    --model (and RETRAIN_REDIS_URL), the run's record gets the training's outcome, and the
    run ends once every training has one."""
    setup_logging(True)
    from core.kube import KubeError, api_client
    from services.trainer import outcome
    from workflows.tfjob import TrainingJobError, wait_for_training

    settings = load_settings()
    if sink and not (run_id and model):
        raise typer.BadParameter("--sink needs --run-id and --model (what failed)")
    memo = _claimed(settings, claim) if claim is not None and claim.is_file() else None
    result, failure, ended = None, None, False  # ended: the job's outcome is known
    started = (time.perf_counter(), time.time())
    try:
        message = wait_for_training(api_client(settings.kube_api_url, settings.kube_token),
                                    namespace, name, timeout, poll)
        result, ended = outcome.read_result(claim.parent / "model") if claim else None, True
    except (TrainingJobError, KubeError) as exc:  # a 403 or 404 says nothing will end it
        failure, ended = str(exc), True
        if isinstance(exc, KubeError):
            failure = f"cannot follow TFJob {name}: {exc}"
        if sink:
            _tell_failure(settings, sink, run_id, model, failure, round_size)  # type: ignore[arg-type]
        raise TrainingJobError(failure) from None
    finally:
        if memo is not None:
            _record_claim(memo, claim, result, run_id or "manual")  # type: ignore[arg-type]
        if ended and run_id and model and settings.redis_url:  # (else nothing is known)
            _record_training(settings, run_id, model, claim, started, result, failure)
    emit_outputs({"message": message}, None)


def _record_training(settings: Any, run_id: str, model: str, claim: Path | None,
                     started: tuple[float, float], result: dict[str, Any] | None,
                     failure: str | None) -> None:
    """The TFJob's outcome in the run's record (best effort: the trainer has told the
    selector already, and Redis may be away hours into a wait)."""
    from core.redis_store import client_for
    from workflows import cluster_run
    from workflows.training import load_claim

    seconds = round(time.perf_counter() - started[0], 3)
    step = cluster_run.training(model)
    checked = load_claim(claim)[0] if claim is not None and claim.is_file() else None
    if failure is None:
        cluster_run.trained(step, model, seconds, result, checked.key if checked else None,
                            checked.decision.reason if checked else None)
    else:
        cluster_run.training_failed(step, model, seconds, failure)
    run = cluster_run.WorkflowRun(client_for(settings.redis_url), run_id)
    cluster_run.best_effort(run, step, seconds, started[1])


def _claimed(settings: Any, claim: Path) -> Any:
    """A Memo renewing the claim's lease while the TFJob runs."""
    from core.cache_policy import TRAINING, Policy
    from core.redis_store import client_for
    from services.trainer.training_cache import training_cache
    from workflows.training import Memo, load_claim

    check, lease, _dataset = load_claim(claim)
    memo = Memo(training_cache(client_for(settings.redis_url), settings.cache_ttl_seconds),
                Policy.parse(check.policy, TRAINING), check.force,
                int(settings.training_lease_seconds * 1000))
    memo.adopt(check, lease)
    return memo


def _record_claim(memo: Any, claim: Path, result: Any, run_id: str) -> None:
    """The TFJob's model into the cache (when it succeeded), the lease let go either way."""
    from workflows.training import load_claim

    check, lease, dataset_uri = load_claim(claim)
    try:
        memo.finish(check, lease, result, run_id, dataset_uri)
    except Exception as exc:  # noqa: BLE001  (the model is fine; only its memo is lost)
        logging.getLogger(__name__).warning("could not record %s in the training cache: %s",
                                            check.model, exc)
    finally:
        memo.close()


def _tell_failure(settings: Any, sink: str, run_id: str, model: str, reason: str,
                  round_size: int | None) -> None:
    """Hours into a wait, Redis may be restarting: the sink waits it out, so the client is
    not made to answer first (and an HTTP sink needs none)."""
    from core.redis_store import client_for
    from services.trainer.main import event_sink
    from services.trainer.options import STREAM_SINK
    from services.trainer.outcome import failed_event

    client = client_for(settings.redis_url) if sink == STREAM_SINK and settings.redis_url else None
    event_sink(settings, sink, client).send(failed_event(run_id, model, reason, round_size))


def create_training(
    manifest: Annotated[str, typer.Option(help="the TFJob, as YAML (the template's, filled in by Argo)")],
    workflow_uid: Annotated[str, typer.Option(help="the Workflow's uid: the job's owner")],
    run_id: Annotated[str, typer.Option(help="the run (the Workflow's name)")],
    model: Annotated[str, typer.Option(help="the variant the job trains")],
    namespace: Annotated[str, typer.Option(help="where to create it")] = "retrain",
    round_size: Annotated[Optional[int], typer.Option(help="trainings the run started")] = None,
    sink: Annotated[Optional[str], typer.Option(help="where training.failed goes when no job can be created (stream or a URL)")] = None,
    claim: Annotated[Optional[Path], typer.Option(help="check-training's claim: its lease is let go when no job can be created")] = None,
    outputs: OutputsOption = None,
) -> None:
    """Create the training's TFJob, named for the training (the Workflow's name and uid, the
    model) and owned by the Workflow. A job of that name that is this training's (an earlier
    try's, whose answer was lost) is adopted; an API server away or overloaded is tried
    again, backing off. A job that cannot be created (refused, invalid, the name taken by
    another job) ends the training: training.failed to --sink, the claim's lease let go, the
    run's record given the failure, and the step fails (exit 1) saying why.

    Outputs: job-name."""
    setup_logging(True)
    import yaml

    from core.errors import ConfigurationError
    from core.kube import KubeError, api_client
    from workflows import tfjob

    settings = load_settings()
    try:
        given = yaml.safe_load(manifest)
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"--manifest is not YAML: {exc}") from None
    if not isinstance(given, dict) or given.get("kind") != "TFJob":
        raise ConfigurationError("--manifest is not a TFJob")
    given = {**given, "metadata": {**(given.get("metadata") or {}), "namespace": namespace}}
    job = tfjob.owned_job(given, run_id, workflow_uid, model)
    started = (time.perf_counter(), time.time())
    try:
        name = tfjob.create_training(api_client(settings.kube_api_url, settings.kube_token), job)
    except KubeError as exc:
        failure = f"TFJob {job['metadata']['name']} could not be created: {exc}"
        if sink:
            _tell_failure(settings, sink, run_id, model, failure, round_size)
        if claim is not None and claim.is_file():
            _record_claim(_claimed(settings, claim), claim, None, run_id)
        if settings.redis_url:
            _record_training(settings, run_id, model, claim, started, None, failure)
        raise tfjob.TrainingJobError(failure) from None
    emit_outputs({"job-name": name}, outputs)


def finish(
    run_id: Annotated[str, typer.Option(help="the run (the Workflow's name)")],
    workflow_uid: Annotated[str, typer.Option(help="the Workflow's uid (its TFJobs' names)")],
    namespace: Annotated[str, typer.Option(help="where its TFJobs are")] = "retrain",
    status: Annotated[str, typer.Option(help="how the Workflow ended: Succeeded, Failed or Error")] = "Failed",
    sink: Annotated[Optional[str], typer.Option(help="where training.failed goes (stream or a URL)")] = None,
) -> None:
    """The Workflow's exit handler: every planned training of the run that never ended (its
    TFJob never created, its wait killed by the Workflow's deadline or failed) has its TFJob
    deleted, if there is one (so it cannot end later), is told to --sink as training.failed
    (the trainer's own id: the selector takes it once) and is recorded failed; a training
    whose trainer did finish (its result beside the model) is recorded trained instead. Then
    a run whose record is still running ends failed, saying how its Workflow ended. Running
    it again tells nothing again: each training it told has an outcome in the record."""
    setup_logging(True)
    from core.redis_store import open_redis
    from services.trainer import outcome
    from workflows import cluster_run

    log = logging.getLogger(__name__)
    settings = load_settings()
    told = []
    with open_redis(settings.redis_url, settings.home) as handle:
        run = cluster_run.WorkflowRun(handle.client, run_id)
        summary = run.summary()
        planned = len(((summary or {}).get("parameters") or {}).get("models") or [])
        for model in cluster_run.unended(summary):
            step, out = cluster_run.training(model), settings.runs_dir / run_id / model / "model"
            result = outcome.read_result(out)
            if result is not None:  # the trainer ended and told the selector itself
                cluster_run.trained(step, model, 0.0, result, None, "recorded on exit")
                run.record(step, 0.0, time.time())
                continue
            reason = f"the workflow ended {status} before this training did" + _removed(
                settings, namespace, run_id, workflow_uid, model, log)
            if sink:
                _tell_failure(settings, sink, run_id, model, reason, planned)
            cluster_run.training_failed(step, model, 0.0, reason)
            run.record(step, 0.0, time.time())
            told.append(model)
            log.info("run %s: %s never ended; told training.failed (%s)", run_id, model, reason)
        ended = cluster_run.ended_by_workflow(run, status)
    if ended is not None:
        log.info("run %s ended %s: %s", run_id, ended["status"], ended.get("error"))
    emit_outputs({"told": ",".join(told)}, None)


def _removed(settings: Any, namespace: str, run_id: str, workflow_uid: str, model: str,
             log: logging.Logger) -> str:
    """Delete the training's TFJob, if it has one; what to add to the reason."""
    from core.kube import KubeError, api_client
    from workflows import tfjob

    name = tfjob.tfjob_name(run_id, workflow_uid, model)
    try:
        if tfjob.delete_training(api_client(settings.kube_api_url, settings.kube_token),
                                 namespace, name):
            return f"; its TFJob {name} deleted"
    except KubeError as exc:  # it may still end and send its model: judged alone then
        log.warning("could not delete TFJob %s: %s", name, exc)
        return f"; its TFJob {name} could not be deleted ({exc})"
    return ""
