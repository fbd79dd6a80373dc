"""``retrain select``: the selector as a service, and rollback."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from retrain.commands.support import console, load_settings, setup_logging

select_app = typer.Typer(no_args_is_help=True, help="The selector (champion and promotion).")


@select_app.command("serve")
def select_serve(
    port: Annotated[Optional[int], typer.Option(help="events port (default RETRAIN_EVENTS_PORT)")] = None,
    stream: Annotated[bool, typer.Option(help="kept for old command lines: the event stream is always consumed")] = True,
) -> None:
    """Judge model.trained CloudEvents from the Redis stream retrain:events and from POST
    /events (appended to the stream before the 202) and promote each candidate that passes
    the promotion gate: better than the champion on its test split, not worse on the pinned
    evaluation set by more than RETRAIN_PROMOTION_PINNED_TOLERANCE, no class losing more
    than RETRAIN_PROMOTION_MAX_CLASS_DROP; models or test splits that are not this project's
    are refused (403)."""
    setup_logging(True)
    from services.selector import main as selector

    from workflows import record

    selector.serve(load_settings(events_port=port), stream=stream, keep=record.keep)


@select_app.command("rollback")
def select_rollback(
    reason: Annotated[str, typer.Option(help="recorded in the audit log and the event")] = "rolled back by hand",
) -> None:
    """Serve the previous champion again (as the next version), atomically; the decision is
    audited and emitted as model.promoted."""
    from services.selector import main as selector

    from workflows import record

    decision = selector.rollback(load_settings(), reason, keep=record.keep)
    console.print(decision.data.reason, highlight=False, soft_wrap=True)
