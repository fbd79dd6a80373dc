"""``retrain step``: the workflow's steps one at a time, as an Argo template runs them.

Each calls the same functions the local runner calls, prints its outputs as one JSON line,
and with ``--outputs DIR`` also writes one file per output (Argo output parameters read
them with ``valueFrom.path``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from retrain.commands.support import load_settings, setup_logging

step_app = typer.Typer(no_args_is_help=True, help="Run one workflow step (what an Argo template runs).")

OutputsOption = Annotated[Optional[Path], typer.Option(help="write each output to a file here")]
SinkOption = Annotated[Optional[str], typer.Option(help="send ingestion.* events here")]


def decide_from_cli(settings: Any, data: str, cache_policy: str, *, record: bool) -> tuple[Any, Any]:
    """Fingerprint ``data`` and decide from the cache: the check-cache step (``record``: a hit
    is counted, a stale entry dropped) or ``retrain cache explain`` (nothing changes)."""
    from core.redis_store import open_redis
    from core.cache_policy import Policy
    from dataset.cache import ingestion_cache
    from workflows import steps

    policy = Policy.parse(cache_policy)
    root = steps.resolve_root(data)
    fp = steps.fingerprint_step(root, settings.home / "statcache")
    decide = steps.check_cache if record else steps.explain_cache
    with open_redis(settings.redis_url, settings.home) as handle:
        check = decide(ingestion_cache(handle.client, settings.cache_ttl_seconds), root, fp, policy)
    return fp, check


def _emit_outputs(outputs: dict[str, object], folder: Path | None) -> None:
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        for name, value in outputs.items():
            text = json.dumps(value) if not isinstance(value, str) else value
            (folder / name).write_text(text)
    print(json.dumps(outputs))


def _send(settings: Any, sink: str | None, event: object) -> None:
    if sink:
        from events.sinks import HttpSink

        HttpSink(sink, api_key=settings.api_key).send(event)  # type: ignore[arg-type]


@step_app.command("plan")
def plan(
    data: Annotated[str, typer.Option("--data", help="the event's data URI")],
    parameters: Annotated[str, typer.Option(help="the event's parameters object as JSON")] = "{}",
    outputs: OutputsOption = None,
) -> None:
    """Check the event's parameters (the same RunParameters the local runner uses) and the
    data URI (a folder on the shared volume), and plan the run.

    Outputs: trainings (JSON list of {model, warm-start}), cache-policy, epochs,
    steps-per-epoch, batch-size, learning-rate, workers, train-cache, force, round-size,
    validation (the data gate's mode)."""
    from workflows.plan import plan_run

    settings = load_settings()

    def champion() -> tuple[str, str] | None:  # asked only when the event wants a warm start
        from core.redis_store import open_redis
        from services.selector.champion import ChampionStore

        with open_redis(settings.redis_url, settings.home) as handle:
            found = ChampionStore(handle.client, str(settings.model_repo.resolve())).get()
        return (found.model_type, found.model_uri) if found else None

    result = plan_run(parameters, data, str(settings.home.resolve()), champion)
    _emit_outputs(result.outputs(), outputs)


@step_app.command("check-cache")
def check_cache(
    data: Annotated[str, typer.Option("--data", help="dataset folder (path or file://)")],
    cache_policy: Annotated[str, typer.Option(help="exact, max-age=15m, min-change=0.1")] = "exact",
    run_id: str = "manual",
    outputs: OutputsOption = None,
    sink: SinkOption = None,
) -> None:
    """Fingerprint the dataset and decide from the content cache whether ingestion must run.

    Outputs: hit (true|false), reason, key, digest, dataset-uri (where the ingested dataset
    is, or will be once the ingest step has run)."""
    from workflows.runner import ingestion_skipped

    settings = load_settings()
    fp, check = decide_from_cli(settings, data, cache_policy, record=True)
    entry = check.decision.entry
    dataset_uri = entry.dataset_uri if entry else str(settings.store_dir / "datasets" / check.key)
    if entry is not None:
        _send(settings, sink, ingestion_skipped(run_id, fp.digest, entry, check.decision.reason))
    _emit_outputs({"hit": "true" if check.decision.hit else "false",
                   "reason": check.decision.reason, "key": check.key, "digest": fp.digest,
                   "dataset-uri": dataset_uri}, outputs)


@step_app.command("ingest")
def ingest(
    data: Annotated[str, typer.Option("--data", help="dataset folder (path or file://)")],
    key: Annotated[str, typer.Option(help="the cache key check-cache derived")],
    run_id: str = "manual",
    outputs: OutputsOption = None,
    sink: SinkOption = None,
) -> None:
    """Ingest the dataset once per key (single flight) and record it in the cache.

    Outputs: dataset-uri, records (JSON), ingested (false when a concurrent run did it)."""
    from core.errors import ConfigurationError
    from core.redis_store import open_redis
    from dataset.cache import ingestion_cache
    from dataset.errors import DatasetValidationError
    from workflows import steps
    from workflows.runner import ingestion_completed, ingestion_failed

    settings = load_settings()
    root = steps.resolve_root(data)
    fp = steps.fingerprint_step(root, settings.home / "statcache")
    expected = steps.key_for(fp)
    if key != expected:
        raise ConfigurationError(
            f"--key {key[:12]}…: the dataset changed since the cache check (its key is now "
            f"{expected[:12]}…); re-run check-cache")
    with open_redis(settings.redis_url, settings.home) as handle:
        try:
            outcome = steps.ingest_step(ingestion_cache(handle.client, settings.cache_ttl_seconds),
                                        root, settings.store_dir, fp, key)
        except DatasetValidationError as exc:
            _send(settings, sink, ingestion_failed(run_id, data, exc))
            raise
    if outcome.result is not None:
        _send(settings, sink, ingestion_completed(run_id, fp.digest, outcome.entry, outcome.result))
    _emit_outputs({"dataset-uri": outcome.entry.dataset_uri, "records": outcome.entry.records,
                   "ingested": "true" if outcome.ingested else "false"}, outputs)


MODES = ("block", "warn", "off")  # RunParameters.validation
MESSAGE_BYTES = 4000  # Kubernetes keeps 4096 bytes of a container's termination message


@step_app.command("validate")
def validate(
    dataset_uri: Annotated[str, typer.Option(help="the ingested dataset (check-cache's dataset-uri)")],
    data: Annotated[str, typer.Option("--data", help="the run's data URI (kept with a blocked run: what retrain approve sends again)")],
    mode: Annotated[str, typer.Option(help="block, warn or off: what a failed check does (the plan's validation)")] = "block",
    parameters: Annotated[str, typer.Option(help="the run's parameters object as JSON (kept with a blocked run)")] = "{}",
    run_id: str = "manual",
    event_id: Annotated[str, typer.Option(help="the triggering event's id")] = "",
    approves: Annotated[str, typer.Option(help="the blocked run this run was approved for (\"\": none)")] = "",
    approved_by: Annotated[str, typer.Option(help="who approved it")] = "",
    sink: Annotated[Optional[str], typer.Option(help="where dataset.rejected goes (stream or a URL)")] = None,
    outputs: OutputsOption = None,
    message_file: Annotated[Optional[Path], typer.Option(help="where a blocked run's reason goes (a pod's /dev/termination-log: Argo shows it as the step's message)")] = None,
) -> None:
    """The data gate before any training (the local runner's validate step): the ingested
    dataset's checks against the champion's data. A blocked run is recorded ``blocked`` (what
    retrain status and retrain approve read), its dataset.rejected goes to --sink, and the
    step exits 3 naming every failed check, so no training starts. A run approving a blocked
    one (--approves) runs only on the very dataset that was blocked (else it fails, exit 1),
    and the approval is kept with the blocked run. Why a run stops goes to --message-file.

    Outputs: status (pass, warn, blocked, off), report (JSON), failed (the checks that did
    not pass, comma-separated)."""
    setup_logging(True)
    from core import timeline
    from core.redis_store import open_redis
    from workflows import blocked, steps
    from workflows import validate as gate
    from workflows.plan import parse_parameters
    from workflows.runner import dataset_rejected
    from workflows.trigger import describe

    if mode not in MODES:
        raise typer.BadParameter(f"{mode!r} is not one of {', '.join(MODES)}", param_hint="--mode")
    settings = load_settings()
    with _told(message_file):
        run = blocked.BlockedRun(run_id, data, parse_parameters(parameters), dataset_uri,
                                 event_id or None)  # bad parameters: refused before any work
        _check_dataset(settings.store_dir, dataset_uri)
        with open_redis(settings.redis_url, settings.home) as handle:
            client = handle.client
            approved = (blocked.approval_for(client, approves, data, dataset_uri)
                        if approves else None)
            steps.pin_first(settings.store_dir, dataset_uri)  # as the local runner does
            report = gate.validate(client, settings,
                                   gate.inputs_for(client, settings, dataset_uri), mode)
            if approved is not None:
                blocked.keep_approval(client, approved, approved_by, run_id)
            message = ""
            if report.status == "blocked":
                message = blocked.record_blocked(client, run, report)
                event = dataset_rejected(run_id, dataset_uri, report)
                timeline.record(client, "event", event.type.short, **describe(event))
                _send_event(settings, sink, client, event)
        _emit_outputs({"status": report.status, "report": report.to_dict(),
                       "failed": ",".join(c.name for c in report.failed())}, outputs)
        if message:
            raise blocked.RunBlocked(message)  # exit 3


def _check_dataset(store: Path, dataset_uri: str) -> None:
    """Refuse a --dataset-uri that is not an intact dataset of this home's store."""
    from core.errors import ConfigurationError
    from dataset.store import verify

    folder = Path(dataset_uri)
    if folder.parent.parent.resolve() != store.resolve():
        raise ConfigurationError(f"--dataset-uri {dataset_uri} is not a dataset of the store "
                                 f"{store}")
    problem = verify(folder)
    if problem:
        raise ConfigurationError(f"--dataset-uri {dataset_uri} cannot be validated: {problem}")


@contextmanager
def _told(message_file: Path | None) -> Iterator[None]:
    """Why the step stops (an expected failure, or the gate) also goes to ``message_file``,
    cut to what Kubernetes keeps of a termination message, which Argo shows as the failed
    step's message."""
    from core.errors import RetrainError
    from core.redact import redact

    try:
        yield
    except RetrainError as exc:
        if message_file is not None:
            try:
                message_file.write_bytes(redact(str(exc)).encode()[:MESSAGE_BYTES])
            except OSError as problem:
                logging.getLogger(__name__).warning("could not write %s: %s", message_file,
                                                    problem)
        raise


@step_app.command("check-training")
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
    run_id: str = "manual",
    round_size: Annotated[Optional[int], typer.Option(help="trainings the run started")] = None,
    sink: Annotated[Optional[str], typer.Option(help="where model.trained goes on a hit (stream or a URL)")] = None,
    outputs: OutputsOption = None,
) -> None:
    """Decide from the training cache whether this training must run (single flight: while
    another workflow trains the same key, wait for its model). A hit sends the recorded
    model's model.trained ("cached": true) to --sink and creates no TFJob. A miss holds the
    key's lease; the claim (``claim.json`` beside --out) lets wait-training renew it and
    record the TFJob's model.

    Outputs: hit (true|false), reason, key, model-uri."""
    from core.redis_store import open_redis
    from core.cache_policy import TRAINING, Policy
    from services.trainer.training_cache import TrainingEntry, training_cache
    from services.trainer.options import TrainOptions
    from services.trainer.outcome import trained_event
    from workflows.training import Memo, save_claim

    settings = load_settings()
    options = TrainOptions(model=model, dataset=dataset_uri, out=out, run_id=run_id,
                           epochs=epochs, steps_per_epoch=steps_per_epoch or None,
                           batch_size=batch_size, learning_rate=learning_rate, workers=workers,
                           warm_start=warm_start or None)
    with open_redis(settings.redis_url, settings.home) as handle:
        memo = Memo(training_cache(handle.client, settings.cache_ttl_seconds),
                    Policy.parse(train_cache, TRAINING), force == "true",
                    int(settings.training_lease_seconds * 1000))
        check = memo.check(options)
        got: Any = check.decision.entry
        reason = check.decision.reason
        if got is None and memo.enabled:
            got = memo.wait(check, time.time(), timeout=8 * 3600)
            if isinstance(got, TrainingEntry):
                reason = "hit: trained by a concurrent run with the same key"
            else:
                save_claim(out.parent / "claim.json", check, got, dataset_uri)
        memo.close()
        if isinstance(got, TrainingEntry):
            _send_event(settings, sink, handle.client,
                        trained_event(run_id, model, dataset_uri, got.result(), round_size,
                                      cached=True))
    hit = isinstance(got, TrainingEntry)
    _emit_outputs({"hit": "true" if hit else "false", "reason": reason, "key": check.key,
                   "model-uri": got.model_uri if hit else str(out)}, outputs)


def _send_event(settings: Any, sink: str | None, client: Any, event: Any) -> None:
    if sink:
        from services.trainer.main import event_sink

        event_sink(settings, sink, client).send(event)


@step_app.command("wait-training")
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
    even when the trainer died too early or too hard to say it itself."""
    setup_logging(True)
    from core.kube import api_client
    from services.trainer import outcome
    from workflows.tfjob import TrainingJobError, wait_for_training

    settings = load_settings()
    if sink and not (run_id and model):
        raise typer.BadParameter("--sink needs --run-id and --model (what failed)")
    memo = _claimed(settings, claim) if claim is not None and claim.is_file() else None
    result = None
    try:
        message = wait_for_training(api_client(settings.kube_api_url, settings.kube_token),
                                    namespace, name, timeout, poll)
        result = outcome.read_result(claim.parent / "model") if claim else None
    except TrainingJobError as exc:
        if sink:
            _tell_failure(settings, sink, run_id, model, str(exc), round_size)  # type: ignore[arg-type]
        raise
    finally:
        if memo is not None:
            _record_claim(memo, claim, result, run_id or "manual")  # type: ignore[arg-type]
    _emit_outputs({"message": message}, None)


def _claimed(settings: Any, claim: Path) -> Any:
    """A Memo renewing the claim's lease while the TFJob runs."""
    from core.redis_store import client_for
    from core.cache_policy import TRAINING, Policy
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
