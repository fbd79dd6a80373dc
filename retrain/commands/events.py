"""``retrain events``: what the event plumbing holds back. ``dead-letters ls`` lists the events
that could not be delivered or judged, with the reason; ``dead-letters replay [ID...]`` puts
them back where they came from (after the cause is fixed: a rotated key, a receiver mended)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from core.errors import ConfigurationError
from retrain.commands.support import console, load_settings

events_app = typer.Typer(no_args_is_help=True, help="Event streams: dead letters.")
dead_app = typer.Typer(no_args_is_help=True, help="Events that could not be delivered or judged.")
events_app.add_typer(dead_app, name="dead-letters")

StreamOption = Annotated[Optional[str], typer.Option(
    "--stream", help="one dead-letter stream, as `ls` names it")]


@dead_app.command("ls")
def ls(stream: StreamOption = None,
       as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every dead letter, oldest first: its id, stream, event and why it died."""
    from core.durations import ago
    from core.redis_store import open_redis
    from events.dead_letters import list_dead

    settings = load_settings()
    with open_redis(settings.redis_url, settings.home) as handle:
        try:
            letters = list_dead(handle.client, stream)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
    if as_json:
        print(json.dumps([asdict(d) for d in letters]))
        return
    if not letters:
        console.print("no dead letters")
        return
    table = Table(title=f"dead letters ({len(letters)})")
    for col in ("id", "stream", "event", "age", "reason"):
        table.add_column(col, no_wrap=col != "reason", overflow="fold")
    now = time.time()
    for d in letters:
        table.add_row(d.entry_id, d.stream, f"{d.event_type.removeprefix('dev.retrain.')} "
                      f"{d.event_id} from {d.source}", ago(now - d.died_at, short=True), d.reason)
    Console().print(table)


@dead_app.command("replay")
def replay(ids: Annotated[Optional[list[str]], typer.Argument(help="ids from ls; none: all")] = None,
           stream: StreamOption = None) -> None:
    """Put dead letters back on the streams they came from, to be delivered or judged again."""
    from core.redis_store import open_redis
    from events.dead_letters import replay as replay_letters

    settings = load_settings()
    with open_redis(settings.redis_url, settings.home) as handle:
        try:
            replayed = replay_letters(handle.client, ids or (), stream)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
    for d in replayed:
        console.print(f"replayed {d.entry_id}: {d.event_type} {d.event_id} -> {d.origin}",
                      highlight=False, soft_wrap=True)
    console.print(f"{len(replayed)} dead letter(s) replayed", highlight=False)
