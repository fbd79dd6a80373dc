"""``retrain step``: the workflow's steps one at a time, as an Argo template runs them.

Each calls the same functions the local runner calls, prints its outputs as one JSON line,
and with ``--outputs DIR`` also writes one file per output (Argo output parameters read
them with ``valueFrom.path``). Given the run (``--run-id``, the Workflow's name), each keeps
its part of the run's record, as the local runner keeps it (``workflows.cluster_run``). The
trainings' steps are ``retrain.commands.step_training``.
"""

from __future__ import annotations

import json
import logging
import sys
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
    from core.cache_policy import Policy
    from core.redis_store import open_redis
    from dataset.cache import ingestion_cache
    from workflows import steps

    policy = Policy.parse(cache_policy)
    root = steps.resolve_root(data)
    fp = steps.fingerprint_step(root, settings.home / "statcache")
    decide = steps.check_cache if record else steps.explain_cache
    with open_redis(settings.redis_url, settings.home) as handle:
        check = decide(ingestion_cache(handle.client, settings.cache_ttl_seconds), root, fp, policy)
    return fp, check


def emit_outputs(outputs: dict[str, object], folder: Path | None) -> None:
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
    run_id: Annotated[Optional[str], typer.Option(help="the Workflow's name: the run's record is begun under it")] = None,
    event: Annotated[str, typer.Option(help="the triggering CloudEvent as JSON (the body the Sensor received; \"\": none)")] = "",
    event_id: Annotated[str, typer.Option(help="its id, when the event itself is not given")] = "",
    sender: Annotated[str, typer.Option(help="who the cluster authenticated the event as (an approval's approver)")] = "",
) -> None:
    """Check the event's parameters (the same RunParameters the local runner uses) and the
    data URI (a folder on the shared volume), and plan the run. With --run-id, the run's
    record is begun, as the local runner begins one: its trigger, parameters and the
    triggering event as its source said it (a bad one fails the plan, as POST /events
    refuses it); a plan that fails is recorded failed, saying why.

    The run is noted as its source's latest arrival (``workflows.coalesce``): a Workflow of
    the same source that gets the mutex while this one waits ends coalesced.

    Outputs: trainings (JSON list of {model, warm-start}), cache-policy, epochs,
    steps-per-epoch, batch-size, learning-rate, workers, train-cache, force, round-size,
    validation (the data gate's mode), source (what "the same source" is for the run's
    event; "" for one that never coalesces), mutex (the Argo mutex of the data path)."""
    from core.redis_store import open_redis
    from workflows import coalesce

    settings = load_settings()
    if run_id is None:
        result, source = _plan(settings, None, data, parameters), None
    else:
        with open_redis(settings.redis_url, settings.home) as handle:
            result, source = _begun(settings, handle.client, run_id, data, parameters, event,
                                    event_id, sender)
    # coalesced by source, locked by path: a training.requested waits for its path's mutex
    emit_outputs({**result.outputs(), "source": source or "",
                  "mutex": coalesce.lock_name(data)}, outputs)


def _plan(settings: Any, client: Any, data: str, parameters: str) -> Any:
    from workflows.plan import plan_run

    def champion() -> tuple[str, str] | None:  # asked only when the event wants a warm start
        from core.redis_store import open_redis
        from services.selector.champion import ChampionStore

        if client is not None:
            found = ChampionStore(client, str(settings.model_repo.resolve())).get()
        else:
            with open_redis(settings.redis_url, settings.home) as handle:
                found = ChampionStore(handle.client, str(settings.model_repo.resolve())).get()
        return (found.model_type, found.model_uri) if found else None

    return plan_run(parameters, data, str(settings.home.resolve()), champion)


def _begun(settings: Any, client: Any, run_id: str, data: str, parameters: str, event: str,
           event_id: str, sender: str) -> tuple[Any, str | None]:
    """The plan and the run's source key, the run's record begun (or recorded failed with
    why it cannot run), and its event noted as its source's newest."""
    from events.errors import EventError
    from workflows import cluster_run
    from workflows.plan import PlanError

    run = cluster_run.WorkflowRun(client, run_id)
    try:
        result = _plan(settings, client, data, parameters)
        try:
            request = cluster_run.request_of(run_id, data, result.parameters, event, event_id,
                                             sender or None)
        except EventError as exc:
            raise PlanError([f"the triggering event: {exc}"]) from None
    except PlanError:
        with run.step("plan") as step:
            step.summary.update(data=data, event_id=event_id or None,
                                trigger=cluster_run.TRIGGER)
            raise
    cluster_run.start(client, request)
    if request.source is not None:
        from workflows import coalesce

        coalesce.note(client, request.source, run_id)
    return result, request.source


@step_app.command("supersede")
def supersede(
    source: Annotated[str, typer.Option(help="the run's source key (the plan's source; \"\": it never coalesces)")],
    run_id: Annotated[str, typer.Option(help="the run (the Workflow's name)")],
    outputs: OutputsOption = None,
) -> None:
    """The first step under the mutex (the run's ``supersede`` step; failing, it fails the
    run): when a run of the source noted later waits for the mutex (or ended having read the
    source since), this run ends coalesced, naming the run covering it, and nothing runs.

    Outputs: coalesced (true|false), covered-by (the covering run, or "")."""
    setup_logging(True)
    from core.redis_store import open_redis
    from workflows import cluster_run, coalesce

    settings = load_settings()
    covering = None
    with open_redis(settings.redis_url, settings.home) as handle, \
            cluster_run.WorkflowRun(handle.client, run_id).step("supersede") as step:
        if source:
            covering = coalesce.supersede(handle.client, run_id, source)
        step.detail.update(covered_by=covering)
        if covering:
            step.status = "coalesced"
    if covering:
        print(f"run {run_id} coalesced: run {covering} covers a newer change of {source}",
              file=sys.stderr)
    emit_outputs({"coalesced": "true" if covering else "false", "covered-by": covering or ""},
                 outputs)


@step_app.command("check-cache")
def check_cache(
    data: Annotated[str, typer.Option("--data", help="dataset folder (path or file://)")],
    cache_policy: Annotated[str, typer.Option(help="exact, max-age=15m, min-change=0.1")] = "exact",
    run_id: Annotated[Optional[str], typer.Option(help="the run (the Workflow's name): its record gets the fingerprint and check_cache steps")] = None,
    outputs: OutputsOption = None,
    sink: SinkOption = None,
) -> None:
    """Fingerprint the dataset and decide from the content cache whether ingestion must run.
    With --run-id the run's record gets the fingerprint and check_cache steps, and on a hit
    the ingest step, skipped, as the local runner records them.

    Outputs: hit (true|false), reason, key, dataset-uri (where the ingested dataset
    is, or will be once the ingest step has run)."""
    from core.cache_policy import Policy
    from core.redis_store import open_redis
    from dataset.cache import ingestion_cache
    from workflows import cluster_run, steps
    from workflows.runner import ingestion_skipped

    settings = load_settings()
    policy = Policy.parse(cache_policy)
    with open_redis(settings.redis_url, settings.home) as handle:
        run = cluster_run.WorkflowRun(handle.client, run_id) if run_id else None
        with _recorded(run, "fingerprint") as step:
            root = steps.resolve_root(data)
            fp = steps.fingerprint_step(root, settings.home / "statcache")
            cluster_run.fingerprinted(step, fp)
        with _recorded(run, "check_cache") as step:
            check = steps.check_cache(ingestion_cache(handle.client, settings.cache_ttl_seconds),
                                      root, fp, policy)
            cluster_run.cache_checked(step, check)
        entry = check.decision.entry
        if check.decision.hit and entry is not None:
            with _recorded(run, "ingest") as step:
                cluster_run.ingested(step, entry, check.decision.reason, None)
    dataset_uri = entry.dataset_uri if entry else str(settings.store_dir / "datasets" / check.key)
    if entry is not None:
        _send(settings, sink, ingestion_skipped(run_id or "manual", fp.digest, entry,
                                                check.decision.reason))
    emit_outputs({"hit": "true" if check.decision.hit else "false",
                   "reason": check.decision.reason, "key": check.key,
                   "dataset-uri": dataset_uri}, outputs)


@contextmanager
def _recorded(run: Any, name: str, *, fatal: bool = True) -> Iterator[Any]:
    """The step ``name`` of ``run``'s record (``workflows.cluster_run``), or, without a run
    to record (no --run-id), the same step recorded nowhere."""
    from workflows.cluster_run import Step

    if run is None:
        yield Step(name)
        return
    with run.step(name, fatal=fatal) as step:
        yield step


@step_app.command("ingest")
def ingest(
    data: Annotated[str, typer.Option("--data", help="dataset folder (path or file://)")],
    key: Annotated[str, typer.Option(help="the cache key check-cache derived")],
    run_id: Annotated[Optional[str], typer.Option(help="the run (the Workflow's name): its record gets the ingest step")] = None,
    outputs: OutputsOption = None,
    sink: SinkOption = None,
) -> None:
    """Ingest the dataset once per key (single flight) and record it in the cache. With
    --run-id the run's record gets the ingest step: the units it wrote and those it reused.

    Outputs: dataset-uri, records (JSON), ingested (false when a concurrent run did it)."""
    from core.errors import ConfigurationError
    from core.redis_store import open_redis
    from dataset.cache import ingestion_cache
    from dataset.errors import DatasetValidationError
    from workflows import cluster_run, steps
    from workflows.runner import ingestion_completed, ingestion_failed

    settings = load_settings()
    with open_redis(settings.redis_url, settings.home) as handle:
        run = cluster_run.WorkflowRun(handle.client, run_id) if run_id else None
        with _recorded(run, "ingest") as step:
            root = steps.resolve_root(data)
            fp = steps.fingerprint_step(root, settings.home / "statcache")
            expected = steps.key_for(fp)
            if key != expected:
                raise ConfigurationError(
                    f"--key {key[:12]}…: the dataset changed since the cache check (its key is "
                    f"now {expected[:12]}…); re-run check-cache")
            try:
                outcome = steps.ingest_step(
                    ingestion_cache(handle.client, settings.cache_ttl_seconds), root,
                    settings.store_dir, fp, key)
            except DatasetValidationError as exc:
                step.detail.update(problems=list(exc.problems))
                _send(settings, sink, ingestion_failed(run_id or "manual", data, exc))
                raise
            cluster_run.ingested(step, outcome.entry, outcome.reason, outcome.result)
    if outcome.result is not None:
        _send(settings, sink, ingestion_completed(run_id or "manual", fp.digest, outcome.entry,
                                                  outcome.result))
    emit_outputs({"dataset-uri": outcome.entry.dataset_uri, "records": outcome.entry.records,
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
    approved_by: Annotated[str, typer.Option(help="who approved it, as the cluster authenticated the approval (the approval's approver)")] = "",
    approval_note: Annotated[str, typer.Option(help="the name the approval itself gave (retrain approve --by): kept as a note, not as who approved")] = "",
    sink: Annotated[Optional[str], typer.Option(help="where dataset.rejected goes (stream or a URL)")] = None,
    outputs: OutputsOption = None,
    message_file: Annotated[Optional[Path], typer.Option(help="where a blocked run's reason goes (a pod's /dev/termination-log: Argo shows it as the step's message)")] = None,
) -> None:
    """The data gate before any training (the local runner's validate step): the ingested
    dataset's checks against the champion's data, kept in the run's record (its validate
    step, the report). A blocked run is recorded ``blocked`` (what retrain status and retrain
    approve read), its dataset.rejected goes to --sink, and the step exits 3 naming every
    failed check, so no training starts. A run approving a blocked one (--approves) runs only
    on the very dataset that was blocked (else it fails, exit 1), and the approval is kept
    with the blocked run. Why a run stops goes to --message-file.

    A run that passes but adds fewer new images than RETRAIN_MIN_CHANGE (and that no person
    asked for: an approval, a manual event, force) is recorded ``deferred``, saying why; the
    step succeeds with status ``deferred`` and the trainings are skipped.

    Outputs: status (pass, warn, blocked, off, deferred), report (JSON), failed (the checks
    that did not pass, comma-separated)."""
    setup_logging(True)
    from core import timeline
    from core.redis_store import open_redis
    from workflows import blocked, cluster_run, steps
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
            with cluster_run.WorkflowRun(client, run_id).step("validate") as step:
                if approves:  # claimed before validating: a second approval trains nothing
                    blocked.keep_approval(client, blocked.approval_for(
                        client, approves, data, dataset_uri), approved_by, run_id, approval_note)
                report = gate.validate(client, settings,
                                       gate.inputs_for(client, settings, dataset_uri), mode)
                deferred = None if report.status == "blocked" else gate.deferral(
                    settings, report, cluster_run.trigger_of(client, run_id, approves),
                    run.parameters.force)
                if report.status in ("pass", "warn") and not deferred:  # the first data the
                    steps.pin_first(settings.store_dir, dataset_uri)  # gate let through
                cluster_run.validated(step, report, dataset_uri, deferred)
                message = (blocked.record_blocked(step, run, report)
                           if report.status == "blocked" else "")
            if message:
                event = dataset_rejected(run_id, dataset_uri, report)
                timeline.record(client, "event", event.type.short, **describe(event))
                send_event(settings, sink, client, event)
        emit_outputs({"status": "deferred" if deferred else report.status,
                       "report": report.to_dict(),
                       "failed": ",".join(c.name for c in report.failed())}, outputs)
        if deferred:
            print(f"run {run_id} {deferred}", file=sys.stderr)
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


def send_event(settings: Any, sink: str | None, client: Any, event: Any) -> None:
    if sink:
        from services.trainer.main import event_sink

        event_sink(settings, sink, client).send(event)


