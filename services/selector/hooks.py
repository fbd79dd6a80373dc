"""What the selector tells besides its decisions: the run of each model it made a champion
version, for the runs' owner (a higher floor, which the selector must not import) to keep
that run's record as long as the version is recorded."""

from __future__ import annotations

import logging
from collections.abc import Callable

from events import Event, EventType

log = logging.getLogger(__name__)


def telling_promotions(emit: Callable[[Event], None],
                       on_promoted: Callable[[str], None]) -> Callable[[Event], None]:
    """``emit``, telling ``on_promoted`` the run id of each ``model.promoted`` first: the
    selector emits one once the promotion has committed (a first model once it is served
    and scored; a rollback, naming the earlier model's run), and again when a redelivered
    candidate's recorded decision is emitted again (told again: keeping is idempotent). A
    failure to tell is logged: the promotion stands, and its decision is still emitted."""

    def emit_telling(decision: Event) -> None:
        if decision.type is EventType.MODEL_PROMOTED:
            run_id = str(getattr(decision.data, "run_id", ""))
            try:
                on_promoted(run_id)
            except Exception:
                log.exception("version %s's run %s was promoted, but could not be kept",
                              getattr(decision.data, "version", "?"), run_id)
        emit(decision)

    return emit_telling
