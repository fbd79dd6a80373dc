"""The selector's decisions as events: ``model.promoted`` and ``model.rejected`` with every
figure the gate looked at and every rule it applied, and the records a promotion keeps of
them (its intent, a candidate's recorded decision)."""

from __future__ import annotations

from dataclasses import asdict

from events import Event, EventType, make_event
from events.payloads import GateRule, ModelPromoted, ModelRejected, ModelTrained
from services.selector.backends import Staged
from services.selector.champion import Champion
from services.selector.policy import Figures

SOURCE = "retrain/selector"


def _fields(trained: ModelTrained, champion: Champion | None, reason: str,
            figures: Figures | None, rules: tuple[GateRule, ...],
            candidate: float | None) -> dict[str, object]:
    champion_score = figures.new.champion if figures else None
    return {
        "run_id": trained.run_id, "model_type": trained.model_type,
        "model_uri": trained.model_uri,
        "candidate_accuracy": figures.new.candidate.accuracy if figures else candidate,
        "champion_accuracy": champion_score.accuracy if champion_score else None,
        "champion_version": champion.version if champion else None, "reason": reason,
        "scores": figures.scores() if figures else (), "rules": rules,
    }


def promoted(trained: ModelTrained, champion: Champion | None, reason: str, version: int,
             figures: Figures | None = None, rules: tuple[GateRule, ...] = ()) -> Event:
    data = ModelPromoted(version=version,
                         **_fields(trained, champion, reason, figures, rules, None))  # type: ignore[arg-type]
    return make_event(EventType.MODEL_PROMOTED, data, source=SOURCE,
                      id=f"{trained.run_id}/{trained.model_type}/decision")


def rejected(trained: ModelTrained, champion: Champion | None, reason: str,
             figures: Figures | None = None, rules: tuple[GateRule, ...] = (),
             candidate: float | None = None) -> Event:
    """``candidate``: its accuracy when it was scored but ``figures`` could not be had."""
    data = ModelRejected(**_fields(trained, champion, reason, figures, rules, candidate))  # type: ignore[arg-type]
    return make_event(EventType.MODEL_REJECTED, data, source=SOURCE,
                      id=f"{trained.run_id}/{trained.model_type}/decision")


def recorded(decision: object) -> Event:
    """A decision as the audit and a promotion's intent keep it (type, id, data), as an
    event again."""
    assert isinstance(decision, dict)
    return make_event(str(decision["type"]), decision["data"], source=SOURCE,
                      id=str(decision["id"]))


def intent(staged: Staged, new: Champion, previous: Champion | None,
           decision: Event) -> dict[str, object]:
    """What a promotion records before the champion changes (``ChampionStore.begin``)."""
    return {"staged": asdict(staged), "new": asdict(new),
            "previous": asdict(previous) if previous else None,
            "decision": {"type": decision.type.value, "id": decision.id,
                         "data": decision.data.model_dump(mode="json")}}


def candidate_id(candidate: ModelTrained | ModelPromoted | ModelRejected) -> str:
    """What identifies a candidate across redeliveries: its run, variant and model folder."""
    return f"{candidate.run_id}/{candidate.model_type}@{candidate.model_uri}"
