"""``retrain replay --since TIME [--source S] [--dry-run] [--events-url URL]
[--structured/--binary] [--json]``: send again the ``dataset.updated`` events that started
the runs recorded since TIME, so the runs they start now follow today's rules (after an
outage, or a change of thresholds).

Each goes out as its source sent it (source, uri, digest, files, origin, trigger, and only
the parameters it carried: ``carried_parameters``), oldest first, with a new id and the
extension attribute ``replayof`` naming the original (a replay of a replay names the first
original, and each original is sent once however many replays of it were recorded).
Choosing what to send is pure (``replays``); sending goes through ``events.sinks.HttpSink``
(structured mode to an ``--events-url``, as ``retrain approve --events-url`` sends: an Argo
Events Sensor reads the event from the request's body) and stops at the first event the
trigger does not take, saying which were sent. Events of one source replayed together
coalesce into its newest run (``workflows.coalesce``): the output says so.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from core.errors import ConfigurationError, RetrainError
from retrain.commands.support import console, load_settings
from workflows.source import source_key

if TYPE_CHECKING:
    from events import Event
    from events.codec import Mode

UPDATED = "dev.retrain.dataset.updated"
REPLAY_OF = "replayof"  # the extension attribute naming the original event
ORIGIN_NAMES = ("repository", "bucket", "folder")  # what --source may name of an origin
PAYLOAD = ("digest", "previous_digest", "files", "origin", "trigger")  # kept in a run's event


class ReplayError(RetrainError):
    """The trigger did not take a replayed event; the message says which were sent."""


@dataclass(frozen=True)
class Replay:
    """One recorded event to send again: the run it started and what is sent."""

    run_id: str
    original: str  # the id of the first original event
    recorded_at: str  # when the original was sent (its time attribute)
    event: Event | None  # None: the run's record cannot make one (``problem`` says why)
    problem: str = ""


def since_time(text: str, now: float) -> float:
    """The epoch seconds ``--since`` names: an ISO 8601 time (without a zone: this machine's)
    or an age (``90s``, ``15m``, ``2h``, ``1d``) before ``now``."""
    from core.durations import parse_duration

    age = parse_duration(text.strip())
    if age is not None:
        return now - age
    try:
        return datetime.fromisoformat(text.strip()).astimezone().timestamp()
    except ValueError:
        raise ConfigurationError(f"--since {text!r}: expected an ISO 8601 time (2024-05-01T10:00, "
                                 "2024-05-01T10:00:00Z) or an age (90s, 15m, 2h, 1d)") from None


def _matches(event: dict[str, Any], source: str | None) -> bool:
    """Whether a recorded event came from ``source``: its source attribute, or the
    repository, bucket or folder its origin names."""
    if source is None:
        return True
    origin = event.get("origin") or {}
    return event.get("source") == source or any(origin.get(n) == source for n in ORIGIN_NAMES)


def replays(summaries: Iterable[dict[str, Any]], source: str | None = None,
            new_id: Callable[[], str] = lambda: str(uuid.uuid4())) -> list[Replay]:
    """Pure: what replaying the runs ``summaries`` (oldest first) sends, in their order: one
    ``dataset.updated`` per original event among those that started a run, from ``source``
    when given (see ``_matches``)."""
    found, originals = [], set()
    for summary in summaries:
        event = summary.get("event") or {}
        if event.get("type") != UPDATED or not _matches(event, source):
            continue
        original = str(event.get(REPLAY_OF) or event.get("id"))
        if original in originals:
            continue
        originals.add(original)
        found.append(_replay(summary, event, original, new_id))
    return found


def _replay(summary: dict[str, Any], event: dict[str, Any], original: str,
            new_id: Callable[[], str]) -> Replay:
    from events import make_event
    from events.errors import EventError

    data = {name: event[name] for name in PAYLOAD if event.get(name) is not None}
    data.update(uri=summary.get("data"), parameters=carried_parameters(summary, event))
    try:
        sent = make_event(UPDATED, data, source=str(event.get("source")),
                          id=new_id(), extensions={REPLAY_OF: original})
    except EventError as exc:  # a record written by an older retrain, say
        return Replay(summary["run_id"], original, str(event.get("time")), None, str(exc))
    return Replay(summary["run_id"], original, str(event.get("time")), sent)


def carried_parameters(summary: dict[str, Any], event: dict[str, Any]) -> dict[str, Any] | None:
    """Pure: the parameters the original event carried, as far as its run's record tells (a
    run trained with the event's parameters, else its trigger's defaults of the time; a
    replay must send only the former, so the replayed run takes today's defaults for the
    rest). None: it carried none.

    A record that keeps the event's own ``parameters`` is read as it is. Otherwise the
    record does not say, and what it does say decides: an event whose ``trigger`` is not
    ``manual`` came from the watcher (a folder, a Git push, a bucket, the nightly rescan),
    which never sends parameters, so it carried none. A manual one (``retrain publish``) may
    have: of the parameters its run trained with, the fields that differ from today's
    defaults are sent (a person's choice, e.g. ``models: ["dropout"]``; possibly an old
    default, which cannot be told apart), and a field equal to today's default is left out,
    being the same either way.
    """
    if "parameters" in event:
        return event["parameters"]
    if event.get("trigger") != "manual":
        return None
    from events.payloads import RunParameters

    today = RunParameters().model_dump(mode="json")
    ran = summary.get("parameters") or {}
    chosen = {k: v for k, v in ran.items() if k in today and v != today[k]}
    return chosen or None


def coalescing(chosen: Iterable[Replay]) -> dict[str, int]:
    """Pure: per source with more than one event among ``chosen``, how many: replayed
    together, they coalesce into the newest one's run (``workflows.coalesce``)."""
    counts: dict[str, int] = {}
    for one in chosen:
        if one.event is None:
            continue
        said = {"type": UPDATED, **one.event.data.model_dump(mode="json")}
        key = source_key(said, str(said["uri"]))
        if key is not None:
            counts[key] = counts.get(key, 0) + 1
    return {key: n for key, n in counts.items() if n > 1}


def described(replay: Replay, status: str) -> dict[str, Any]:
    """One replay as ``--json`` prints it (and the line a person reads is made from)."""
    event = replay.event
    data = event.data.model_dump(mode="json") if event is not None else {}
    return {"status": status, "id": event.id if event is not None and status == "sent" else None,
            REPLAY_OF: replay.original, "run_id": replay.run_id,
            "source": event.source if event is not None else None, "uri": data.get("uri"),
            "digest": data.get("digest"), "recorded_at": replay.recorded_at,
            **({"problem": replay.problem} if replay.problem else {})}


def line(said: dict[str, Any]) -> str:
    digest = str(said["digest"] or "-")[:12]
    head = f"{said['status']:<10} " + (f"{said['id']} " if said["id"] else "")
    text = (f"{head}replayof {said[REPLAY_OF]} · {said['source'] or '-'} · {said['uri'] or '-'} "
            f"· digest {digest} · run {said['run_id']} at {said['recorded_at']}")
    return text + (f": {said['problem']}" if said.get("problem") else "")


def replay(
    since: Annotated[str, typer.Option(help="an ISO 8601 time (2024-05-01T10:00) or an age (2h, 1d)")],
    source: Annotated[Optional[str], typer.Option(help="only events with this source attribute, or from this repository, bucket or folder")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list what would be sent; send nothing")] = False,
    events_url: Annotated[Optional[str], typer.Option(help="where to send (default: this machine's trigger); a cluster's webhook, e.g. http://localhost:12000/dataset-updated")] = None,
    structured: Annotated[Optional[bool], typer.Option("--structured/--binary", help="CloudEvents mode (default: structured to an --events-url, which an Argo Events Sensor needs; binary to this machine's trigger, which takes both)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per event")] = False,
) -> None:
    """Send again the dataset.updated events of the runs recorded since TIME, oldest first,
    with new ids and replayof naming the original: the runs they start follow today's
    rules."""
    from core.redis_store import open_redis
    from events.errors import EventError
    from events.sinks import HttpSink
    from workflows import record

    settings = load_settings()
    start = since_time(since, time.time())
    with open_redis(settings.redis_url, settings.home) as handle:
        chosen = replays(record.runs_since(handle.client, start), source)
    url = events_url or settings.events_url
    show: Callable[[dict[str, Any]], None] = (
        (lambda said: print(json.dumps(said), flush=True)) if as_json
        else (lambda said: print(line(said), flush=True)))
    sink = HttpSink(url, mode=mode_for(events_url, structured), api_key=settings.api_key,
                    attempts=3)
    sent: list[Replay] = []
    for n, chosen_one in enumerate(chosen):
        if chosen_one.event is None:
            show(described(chosen_one, "skipped"))
        elif dry_run:
            show(described(chosen_one, "would send"))
        else:
            try:
                sink.send(chosen_one.event)
            except EventError as exc:
                raise ReplayError(_stopped(url, exc, sent, chosen[n:])) from None
            sent.append(chosen_one)
            show(described(chosen_one, "sent"))
    when = datetime.fromtimestamp(start).astimezone().isoformat(timespec="seconds")
    count = sum(c.event is not None for c in chosen)
    console.print(f"{'dry run: ' if dry_run else ''}{count} event(s) recorded since {when}"
                  + (f" from {source}" if source else "")
                  + (" would be sent" if dry_run else " sent") + f" to {url}"
                  + coalesced_note(coalescing(chosen)), highlight=False, soft_wrap=True)


def mode_for(events_url: str | None, structured: bool | None) -> Mode:
    """The CloudEvents mode a replay sends in: ``--structured``/``--binary`` when given, else
    structured to an ``--events-url`` (as ``retrain approve --events-url``: a cluster's Argo
    Events Sensor filters on, and names the Workflow from, the body's type, source and id)
    and binary to this machine's trigger (as ``retrain publish``; it takes both)."""
    if structured is None:
        structured = events_url is not None
    return "structured" if structured else "binary"


def coalesced_note(sources: dict[str, int]) -> str:
    """What the last line adds when events of one source went together: they start one run
    (two when one was already working), the others ending ``coalesced``."""
    if not sources:
        return ""
    each = ", ".join(f"{n} for {key}" for key, n in sources.items())
    return (f"; {each}: events of one source coalesce, so each source gets one run (two if "
            "one is already working), its newest event's, and the others are recorded "
            "coalesced, covered by it (retrain status)")


def _stopped(url: str, exc: Exception, sent: list[Replay], left: list[Replay]) -> str:
    """What a failed replay says: why, what was sent (with its new ids), what was not."""
    done = (f"sent {len(sent)}: " + ", ".join(f"{r.event.id} (replayof {r.original})"
                                                 for r in sent if r.event is not None)
            if sent else "nothing was sent")
    rest = ", ".join(r.original for r in left if r.event is not None)
    return (f"the trigger at {url} did not take a replayed event ({exc}); {done}; not sent: "
            f"{rest}")
