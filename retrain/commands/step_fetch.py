"""``retrain step fetch``: the workflow's first step, bringing what Argo Events' Git or
bucket source notified onto the shared volume (``workflows.fetch``), or passing on the data
URI and event a ``dataset.updated`` gave."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from retrain.commands.step import OutputsOption, emit_outputs
from retrain.commands.support import load_settings, setup_logging


def fetch(
    fetch_spec: Annotated[str, typer.Option("--fetch", help="what to fetch, as JSON (\"\": nothing: the data URI and event pass on as given)")] = "",
    data_uri: Annotated[str, typer.Option(help="the event's data URI, when nothing is fetched")] = "",
    event: Annotated[str, typer.Option(help="the triggering CloudEvent as JSON, when nothing is fetched")] = "",
    outputs: OutputsOption = None,
) -> None:
    """Fetch the pushed commit (kind git: repository, commit, ref, path, delivery) or the
    notified bucket prefix (kind s3: bucket, prefix, notification, delivery) into a folder of
    its own under $RETRAIN_HOME/git or $RETRAIN_HOME/s3 (a redelivery fetches nothing), and
    give its data URI and the dataset.updated the watcher would send for it. With no --fetch,
    --data-uri and --event are given on as they are. A bad spec fails with exit code 2 and
    writes nothing.

    Outputs: data-uri, event."""
    from workflows.fetch import FetchSpecError, parse_spec
    from workflows.fetch import fetch as fetch_revision

    setup_logging(True)  # what was fetched, or found already here, in the step's log
    if not fetch_spec.strip():
        emit_outputs({"data-uri": data_uri, "event": event}, outputs)
        return
    settings = load_settings()
    spec = parse_spec(fetch_spec, settings.fetch_repositories)
    if spec is None or data_uri.strip() or event.strip():
        why = "--data-uri and --event come from the fetch: give them empty with --fetch"
        raise FetchSpecError([why])
    fetched = fetch_revision(spec, settings.home.resolve(), git_token=settings.git_credential,
                             s3_client=lambda: _s3_client(settings.s3_endpoint),
                             settle=settings.watch_settle)
    emit_outputs({"data-uri": fetched.data_uri, "event": _structured(fetched.event)}, outputs)


def _s3_client(endpoint: str | None) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint)


def _structured(event: Any) -> str:
    """The event as one structured-mode CloudEvent JSON (what the Sensor passes on)."""
    from events.codec import encode

    _, body = encode(event, "structured")
    return json.dumps(json.loads(body), separators=(",", ":"))

