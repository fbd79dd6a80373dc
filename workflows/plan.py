"""The plan of a run on a cluster: the event's whole ``parameters`` object, checked with the
same ``RunParameters`` model the local runner uses, turned into what the later steps need.

The Sensor hands the WorkflowTemplate two things from a ``dataset.updated`` or
``training.requested``: the data URI and the ``parameters`` object as JSON (any field added
to ``RunParameters`` later reaches the workflow without touching the Sensor). The first step
(``retrain step plan``) calls ``plan_run``: a bad parameter, or a data URI outside the
shared volume, fails the workflow at once with every problem named. Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

from pydantic import ValidationError

from events.payloads import RunParameters
from workflows.errors import WorkflowError


class PlanError(WorkflowError):
    """The event asks for a run this workflow will not do; ``problems`` lists why."""

    exit_code = 2

    def __init__(self, problems: list[str]) -> None:
        super().__init__("cannot plan the run: " + "; ".join(problems))
        self.problems = tuple(problems)


@dataclass(frozen=True)
class Plan:
    parameters: RunParameters
    trainings: tuple[dict[str, str], ...]  # {"model": ..., "warm-start": path or ""}

    def outputs(self) -> dict[str, str]:
        """The step's output parameters (Argo reads each from a file)."""
        p = self.parameters
        return {"trainings": json.dumps(list(self.trainings)), "cache-policy": p.cache_policy,
                "epochs": str(p.epochs), "steps-per-epoch": str(p.steps_per_epoch or 0),
                "batch-size": str(p.batch_size), "learning-rate": repr(p.learning_rate),
                "workers": str(p.workers), "train-cache": p.train_cache,
                "force": "true" if p.force else "false",
                "deterministic": "true" if p.deterministic else "false",
                # the selector's round for the run closes once this many trainings have ended
                "round-size": str(len(self.trainings)),
                # the data gate's mode: what the validate step does when a check fails
                "validation": p.validation}


def parse_parameters(text: str) -> RunParameters:
    """``RunParameters`` from the event's ``parameters`` JSON ("" or "null": the defaults)."""
    try:
        raw = json.loads(text) if text.strip() else None
    except json.JSONDecodeError as exc:
        raise PlanError([f"parameters are not JSON: {exc}"]) from None
    if raw is None:
        return RunParameters()
    if not isinstance(raw, dict):
        raise PlanError([f"parameters must be a JSON object, got {type(raw).__name__}"])
    try:
        return RunParameters(**raw)
    except ValidationError as exc:
        raise PlanError([f"parameters.{'.'.join(map(str, e['loc']))}: {e['msg']}"
                         for e in exc.errors()]) from None


def data_uri_problem(data_uri: str, volume: str) -> str | None:
    """Why ``data_uri`` is not a dataset folder on the shared volume, or None."""
    path = data_uri.removeprefix("file://")
    parts = PurePosixPath(path).parts
    if not path.startswith("/") or "://" in path:
        return f"data URI {data_uri!r} is not an absolute path on the shared volume"
    if any(part.startswith(".") for part in parts[1:]):  # ".", "..", hidden folders
        return f"data URI {data_uri!r} has a hidden or relative component"
    if PurePosixPath(path) == PurePosixPath(volume) or not PurePosixPath(path).is_relative_to(volume):
        return f"data URI {data_uri!r} is outside the shared volume {volume}"
    return None


def plan_run(parameters_json: str, data_uri: str, volume: str,
             champion: Callable[[], tuple[str, str] | None] = lambda: None) -> Plan:
    """The run the event asks for, or every reason it cannot be run. ``champion`` looks up
    (variant, model folder) of the model being served, only when ``warm_start`` asks for it;
    that variant's training then starts from it."""
    problems = []
    try:
        params = parse_parameters(parameters_json)
    except PlanError as exc:
        problems.extend(exc.problems)
    uri_problem = data_uri_problem(data_uri, volume)
    if uri_problem:
        problems.append(uri_problem)
    if problems:
        raise PlanError(problems)
    served = champion() if params.warm_start else None
    warm = {served[0]: served[1]} if served else {}
    trainings = tuple({"model": m, "warm-start": warm.get(m, "")} for m in params.models)
    return Plan(params, trainings)
