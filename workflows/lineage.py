"""The lineage of a served model: why version N is served, link by link.

``lineage(client, scope, "7")`` answers, for version 7 of the model repository ``scope``: the
decision that served it (every figure and rule the gate looked at), the model (its files'
digest, variant, parameters, code version, training time, trained or reused from the training
cache, warm-started from which version), the dataset (digest, which units were ingested and
which reused), the validation report, the run (trigger, parameters) and the events that caused
it, with what their source said (a Git commit and its pusher, a bucket's keys and ETags, the
folder), and what the live guard made of it once served (watching, settled, rolled back). Given a run id instead, it answers for the version that run promoted, or, when it
promoted nothing, for the run alone and says so.

Nothing here writes: every record is read through its owner (``ChampionStore``,
``workflows.record``, ``services.trainer.progress`` and the training cache, the dataset
store's metadata, the model folder's info file). Reads are bounded whatever the number of
runs kept: one record of each kind, by key. A version that is no longer the champion is
looked up in the champion history (one list of the previous champions).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import redis

from dataset.store import load_metadata
from repository.digest import model_digest
from repository.layout import INFO_FILE
from services.selector.champion import Champion, ChampionStore
from services.selector.guard_store import guard_state
from services.trainer import outcome, progress
from services.trainer.training_cache import TrainingEntry, training_cache
from workflows import record
from workflows.errors import WorkflowError

KEYS = ("version", "decision", "guard", "model", "training", "dataset", "validation", "run",
        "events")
PROMOTIONS = ("model.promoted", "rollback")  # the decisions that serve a version
WARM_STARTED = "warm-started from "  # how a training's result says where it started from
TRAINING_PARAMETERS = ("epochs", "steps_per_epoch", "batch_size", "learning_rate", "workers")
UNIT_FILES_SHOWN = 4  # the files named of a unit (an IDX pair has two, an increment one folder)


class LineageNotFoundError(WorkflowError):
    """A version or run the records say nothing about."""

    def __init__(self, asked: str, why: str) -> None:
        super().__init__(why)
        self.asked = asked


def lineage(client: redis.Redis, scope: str, version_or_run: str | int) -> dict[str, Any]:
    """The lineage of a version of ``scope``'s model repository (``"7"`` or ``7``), or of the
    version a run promoted (its id); keys: ``KEYS``. Raises ``LineageNotFoundError`` when
    neither is recorded."""
    store = ChampionStore(client, scope)
    asked = str(version_or_run).strip()
    if isinstance(version_or_run, int) or asked.isdigit():
        version: int | None = int(asked)
        champion, serving = _champion(store, int(asked))
        run_id = champion.run_id
        decisions = store.decisions_of(run_id)
        decision = _served_by(decisions, int(asked))
    else:
        run_id = asked
        decisions = store.decisions_of(run_id)
        decision = _promotion_of(decisions)
        version = int(decision["version"]) if decision else None
        champion, serving = _champion(store, version) if version is not None else (None, False)
    summary = record.get(client, run_id)
    if summary is None and champion is None and not decisions:
        raise LineageNotFoundError(asked, f"no run {asked!r} is recorded (runs are kept "
                                          f"{record.KEPT // 86400} days) and no decision names it")
    summary = summary or {"run_id": run_id, "steps": [], "models": {}, "gone": True,
                          "error": f"the run's record is gone (runs are kept "
                                   f"{record.KEPT // 86400} days)"}
    variant = champion.model_type if champion else None
    trainings = _Trainings(client, summary)
    return {
        "version": version,
        "decision": _decision(decision, decisions, run_id, version),
        "guard": _guard(client, scope, version, decisions),
        "model": _model(champion, serving, decision, trainings.entry(variant)) if champion else None,
        "training": trainings.of(variant) if variant else trainings.every(),
        "dataset": _dataset(summary),
        "validation": _validation(summary),
        "run": _run(summary),
        "events": _events(client, summary, trainings.trainers(variant)),
    }


# the version -----------------------------------------------------------------------------------
def _champion(store: ChampionStore, version: int) -> tuple[Champion, bool]:
    """The champion record of ``version`` and whether it is served now."""
    current = store.get()
    if current is not None and current.version == version:
        return current, True
    kept = store.champion(version)  # one read, however many versions were served
    if kept is not None:
        return kept, False
    history = store.history()  # versions served before the per-version record existed
    for champion in reversed(history):
        if champion.version == version:
            return champion, False
    served = sorted({c.version for c in history} | ({current.version} if current else set()))
    known = (f"versions recorded: {_ranges(served)}, version {current.version} served now"
             if current else "no version has been served yet")
    raise LineageNotFoundError(str(version), f"no version {version} in the champion records "
                                             f"of {store.scope} ({known})")


def _ranges(versions: list[int]) -> str:
    """``[1, 2, 3, 5]`` as ``1-3, 5``."""
    spans: list[list[int]] = []
    for v in versions:
        if spans and v == spans[-1][1] + 1:
            spans[-1][1] = v
        else:
            spans.append([v, v])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _served_by(decisions: list[dict[str, Any]], version: int) -> dict[str, Any] | None:
    """The decision that served ``version`` (a promotion, or a rollback to an earlier model)."""
    return next((d for d in reversed(decisions)
                 if d.get("type") in PROMOTIONS and d.get("version") == version), None)


def _promotion_of(decisions: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run's own promotion (not a later rollback to its model), the newest if several."""
    return next((d for d in reversed(decisions) if d.get("type") == "model.promoted"
                 and d.get("version") is not None), None)


# the links ------------------------------------------------------------------------------------
def _guard(client: redis.Redis, scope: str, version: int | None,
           decisions: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What the live guard made of the version: ``state`` watching, settled (with its
    window's figures), rolledback (rule, figures, when, the version that replaced it, and an
    approval of its model since), superseded or not rolled back; None: it never watched it."""
    if version is None:
        return None
    found = guard_state(client, scope, version)
    if found is None:
        return {"state": None, "summary": f"version {version} was not watched by the live "
                                          "guard (a first model, a rollback, or the guard off)"}
    state = dict(found)
    kind = state.get("state")
    window = state.get("window") or {}
    if kind == "watching":
        said = f"watching version {version} against version {state.get('previous_version')}"
    elif kind == "settled":
        said = (f"settled after {window.get('requests')} answers, "
                f"{window.get('errors')} errors: every rule passed")
    elif kind == "rolledback":
        said = (f"rolled back by the live guard ({state.get('rule')}); version "
                f"{state.get('restored_version')} replaced it, serving version "
                f"{state.get('previous_version')}'s model")
        approved = next((d for d in reversed(decisions) if d.get("type") == "approved"
                         and d.get("version") == version), None)
        if approved is not None:
            state["approved"] = {k: approved.get(k) for k in ("at", "by", "note")}
            said += f"; its model approved since by {approved.get('by')}"
    elif kind == "superseded":
        said = f"replaced by version {state.get('by')} before its window ended, never settled"
    else:
        said = str(state.get("reason") or kind)
    return {**state, "summary": said}


def _decision(decision: dict[str, Any] | None, decisions: list[dict[str, Any]], run_id: str,
              version: int | None) -> dict[str, Any]:
    """The decision with every figure and rule, a sentence saying what it did, and the run's
    other decisions (the variants that lost, a later rollback)."""
    others = [{k: d.get(k) for k in ("type", "model_type", "version", "candidate_accuracy",
                                     "reason")} for d in decisions if d is not decision]
    if decision is None:
        if version is not None:
            said = f"no promotion of version {version} is recorded for run {run_id}"
        else:
            said = f"run {run_id} promoted no model" + (
                f": {len(others)} decision(s) on its models, none a promotion" if others
                else " (no decision on its models is recorded)")
        return {"type": None, "summary": said, "others": others}
    kind = "rolled back to" if decision.get("type") == "rollback" else "promoted"
    said = (f"{decision.get('model_type')} of run {run_id} {kind} version {version}: "
            f"{decision.get('reason')}")
    return {**decision, "scores": list(decision.get("scores") or []),
            "rules": list(decision.get("rules") or []), "summary": said, "others": others}


def _model(champion: Champion, serving: bool, decision: dict[str, Any] | None,
           entry: TrainingEntry | None) -> dict[str, Any]:
    """The served model: where, its files' digest (and whether it is the trained model's),
    its variant and what its own info file says."""
    folder = Path(champion.model_uri)
    present = folder.is_dir()
    digest = model_digest(folder) if present else None
    info_file = folder / INFO_FILE
    info = json.loads(info_file.read_text()) if present and info_file.is_file() else None
    trained = entry.model_digest if entry else None
    return {
        "version": champion.version, "variant": champion.model_type, "location": str(folder),
        "present": present, "serving": serving, "files_digest": digest,
        "trained_digest": trained,
        "digest_matches": None if digest is None or trained is None else digest == trained,
        "accuracy": champion.accuracy, "dataset_digest": champion.dataset_digest,
        "dataset_uri": champion.dataset_uri, "generation": champion.generation,
        "trained_model": (decision or {}).get("model_uri"), "info": info,
    }


class _Trainings:
    """A run's trainings as its summary, the training cache, the trainer's result file and
    its progress record tell them."""

    def __init__(self, client: redis.Redis, summary: dict[str, Any]) -> None:
        self._client, self._summary = client, summary
        self._cache = training_cache(client, 0)  # read only: the TTL is the writer's

    def _step(self, variant: str) -> dict[str, Any]:
        return next((s for s in reversed(self._summary.get("steps") or [])
                     if s.get("name") == f"train:{variant}"), {})

    def trained_by(self, variant: str) -> str:
        return str(self._step(variant).get("trained_by") or self._summary["run_id"])

    def trainers(self, variant: str | None) -> list[str]:
        """The runs that trained ``variant``'s model (each variant's when None), this one's
        first."""
        models = [variant] if variant else list((self._summary.get("parameters") or {}).get(
            "models") or [])
        return list(dict.fromkeys([self._summary["run_id"], *map(self.trained_by, models)]))

    def entry(self, variant: str | None) -> TrainingEntry | None:
        """The training cache's entry of the variant's model, if it is still that model's."""
        key = self._step(variant).get("key") if variant else None
        found = self._cache.get(key) if key else None
        model = (self._summary.get("models") or {}).get(variant, {}).get("model_uri")
        return found if found is not None and found.model_uri == model else None

    def every(self) -> dict[str, Any]:
        models = list((self._summary.get("parameters") or {}).get("models") or [])
        return {"variants": {m: self.of(m) for m in models}}

    def of(self, variant: str) -> dict[str, Any]:
        step, entry = self._step(variant), self.entry(variant)
        outcome_ = (self._summary.get("models") or {}).get(variant, {})
        model_uri = outcome_.get("model_uri")
        result = (outcome.read_result(Path(model_uri)) if model_uri else None) or self._progress(
            variant)
        parameters = ({k: entry.parts.get(k) for k in (*TRAINING_PARAMETERS, "seed")} if entry
                      else {k: (self._summary.get("parameters") or {}).get(k)
                            for k in TRAINING_PARAMETERS})
        return {
            "variant": variant, "status": outcome_.get("status") or step.get("status"),
            "cached": bool(step.get("cached")), "cache_reason": step.get("reason"),
            "cache_key": step.get("key"), "trained_by": self.trained_by(variant),
            "model_uri": model_uri, "parameters": parameters,
            "code_version": entry.parts.get("code") if entry else None,
            "seconds": (result or {}).get("seconds", entry.trained_seconds if entry else None),
            "trained_at": entry.created_at if entry else step.get("ended_at"),
            "steps": (result or {}).get("steps"), "val_accuracy": outcome_.get("val_accuracy"),
            "val_loss": (result or {}).get("val_loss"),
            "weights_digest": (result or {}).get("weights_digest"),
            "warm_start": _warm_start(result, entry, model_uri),
        }

    def _progress(self, variant: str) -> dict[str, Any] | None:
        """The result the trainer's last word in its progress record carried."""
        found = progress.read(self._client, self.trained_by(variant), variant, points=False)
        raw = found.fields.get("result")
        return json.loads(raw) if raw else None


def _warm_start(result: dict[str, Any] | None, entry: TrainingEntry | None,
                model_uri: str | None) -> dict[str, Any] | None:
    """Where the training started from: the model folder its result names, and that
    folder's version when it is one of the repository's (``<repo>/<name>/<version>``)."""
    note = str((result or {}).get("warm_start") or "")
    if not note:
        return None
    source = note.removeprefix(WARM_STARTED) if note.startswith(WARM_STARTED) else None
    version = int(Path(source).name) if source and Path(source).name.isdigit() else None
    return {"from": source, "from_version": version, "note": note,
            "digest": entry.parts.get("warm_start") if entry else None}


def _dataset(summary: dict[str, Any]) -> dict[str, Any]:
    """The dataset the run trained on: digest, where, how it was ingested, and its units,
    each ingested by this run or reused (from an earlier ingestion, or the cache)."""
    ingest = next((s for s in summary.get("steps") or [] if s.get("name") == "ingest"), {})
    uri = summary.get("dataset_uri")
    meta: dict[str, Any] | None = None
    if uri and (Path(uri) / "metadata.json").is_file():
        meta = load_metadata(uri)
    units = ingest.get("units") or {}
    if not units and ingest.get("status") == "skipped" and meta:  # the whole dataset reused
        units = {"ingested": [], "reused": [str(u["id"]) for u in meta.get("units") or []]}
    described = {str(u["id"]): _unit(u) for u in (meta or {}).get("units") or []}
    splits = (meta or {}).get("splits") or {}
    event = summary.get("event") or {}
    return {
        "digest": summary.get("digest"), "previous_digest": event.get("previous_digest"),
        "uri": uri, "present": meta is not None, "key": (meta or {}).get("key"),
        "code_version": (meta or {}).get("code_version"),
        "records": {name: s.get("count") for name, s in splits.items()},
        "cache": summary.get("cache"),
        "units": {kind: [{"id": u, **described.get(u, {})} for u in units.get(kind) or []]
                  for kind in ("ingested", "reused")},
        "units_recorded": bool(units),
        "new_units": ingest.get("new_units"), "reused_units": ingest.get("reused_units"),
    }


def _unit(unit: dict[str, Any]) -> dict[str, Any]:
    """A unit as a person knows it: its split and what it was made from (a split's IDX pair,
    an increment's folder)."""
    files = [str(f) for f in unit.get("files") or []]
    source = ", ".join(files[:UNIT_FILES_SHOWN])
    if len(files) > UNIT_FILES_SHOWN:
        source += f" and {len(files) - UNIT_FILES_SHOWN} more"
    return {"split": unit.get("split"), "source": source}


def _validation(summary: dict[str, Any]) -> dict[str, Any]:
    found = summary.get("validation")
    report = dict(found) if isinstance(found, dict) else {
        "status": None, "reference": None, "checks": [], "cached": False,
        "note": f"run {summary['run_id']} recorded no validation report"}
    if summary.get("approval"):
        report["approval"] = summary["approval"]
    return report


def _run(summary: dict[str, Any]) -> dict[str, Any]:
    fields = ("run_id", "status", "trigger", "event_id", "data", "parameters", "started_at",
              "seconds", "error", "attempt", "resumes", "approval")
    return {**{k: summary.get(k) for k in fields},
            "steps": [{k: s.get(k) for k in ("name", "status", "seconds")}
                      for s in summary.get("steps") or []],
            # the events of coalesced runs this run's data covers (each: run_id, event_id,
            # time, digest), when it absorbed any
            "covers": list(summary.get("covers") or [])}


def _events(client: redis.Redis, summary: dict[str, Any],
            trainers: list[str]) -> list[dict[str, Any]]:
    """The events that caused the version: the one that started its run and, for a model
    reused from the training cache, the one that started the run that trained it."""
    found = [_cause(summary, "started this run")]
    for run_id in trainers[1:]:
        earlier = record.get(client, run_id)
        if earlier is not None:
            found.append(_cause(earlier, "started the run that trained the model reused"))
    return found


def _cause(summary: dict[str, Any], role: str) -> dict[str, Any]:
    event = summary.get("event")
    if event:
        return {"role": role, "run_id": summary["run_id"], **event}
    note = (f"run {summary['run_id']}: {summary['error']}" if summary.get("gone") else
            f"run {summary['run_id']} was started by {summary.get('trigger') or 'hand'}, "
            "not by an event")
    return {"role": role, "run_id": summary["run_id"], "type": None,
            "trigger": summary.get("trigger"), "note": note}


def origin_text(origin: dict[str, Any] | None, objects_shown: int = 3) -> str:
    """What an event's origin says, in a line: the Git push (commit, ref, repository, pusher,
    delivery), the bucket's objects (keys, ETags, sizes) or the folder."""
    if not origin:
        return "no origin recorded"
    kind = origin.get("kind")
    if kind == "git":
        commit = str(origin.get("commit") or "")[:12] or "an unknown commit"
        said = f"Git commit {commit} on {origin.get('ref') or '?'} of {origin.get('repository')}"
        if origin.get("pusher"):
            said += f", pushed by {origin['pusher']}"
        return said + (f" (delivery {origin['delivery']})" if origin.get("delivery") else "")
    if kind == "bucket":
        objects = origin.get("objects") or []
        total = origin.get("objects_total") or len(objects)
        named = ", ".join(f"{o.get('key')}{_object_said(o)}" for o in objects[:objects_shown])
        shown = min(len(objects), objects_shown)
        more = f" and {total - shown} more" if total > shown else ""
        return f"bucket {origin.get('bucket')}: {total} object(s): {named}{more}"
    if kind == "folder":
        return f"folder {origin.get('folder')}"
    return "published by hand" if kind == "manual" else f"{kind}"


def _object_said(named: dict[str, Any]) -> str:
    """`` (ETag e, 12 bytes)``: what a bucket said of an object (a removal names the key alone)."""
    said = [f"ETag {named['etag']}"] if named.get("etag") else []
    said += [f"{named['size']} bytes"] if named.get("size") is not None else []
    return f" ({', '.join(said)})" if said else ""
