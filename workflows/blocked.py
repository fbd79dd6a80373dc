"""A run the data gate blocked on a cluster, and the approval that lets it train.

A cluster's workflow keeps its run's record a step at a time (``workflows.cluster_run``); its
validate step (``retrain step validate``) records a blocked run in the local runner's shape,
``blocked`` with its validate step, the report and why (``record_blocked``), which ``retrain
status``, the dashboard and ``retrain approve`` read. ``retrain approve`` then sends a
``training.requested`` that starts a new workflow; its validate step finds the blocked run
here (``approval_for``: only a run blocked on the very dataset this one validates; otherwise
it fails, as the local runner does when the data changed since) and keeps the approval with
it (``keep_approval``): the blocked run ends ``approved``, naming who approved it, as the
cluster authenticated the approval, the name the approval gave as a note, and the run that
trains in its place.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import redis

from events.payloads import RunParameters
from workflows import record
from workflows.cluster_run import Step
from workflows.errors import ApprovalError, WorkflowError
from workflows.validate import Report, remember_approved

log = logging.getLogger(__name__)


class RunBlocked(WorkflowError):
    """The data gate blocked the run: no training starts; the message names every failed
    check."""

    exit_code = 3  # as ``retrain run`` and ``retrain validate`` exit for a blocked run


@dataclass(frozen=True)
class BlockedRun:
    run_id: str  # the Workflow's name
    data_uri: str  # what an approval sends again
    parameters: RunParameters
    dataset_uri: str  # the dataset the gate blocked
    event_id: str | None = None


def record_blocked(step: Step, run: BlockedRun, report: Report) -> str:
    """What the validate step records of a blocked run, as the local runner leaves one: its
    validate step ``blocked``, status ``blocked`` and why, and what ``retrain approve`` sends
    again (the data URI, the parameters), even if the plan step recorded nothing. Returns
    why."""
    message = report.blocked_message()
    step.status = "blocked"
    step.detail.update(reason=message)
    step.summary.update(status="blocked", error=message, dataset_uri=run.dataset_uri,
                        digest=report.digest, data=run.data_uri,
                        parameters=run.parameters.model_dump(mode="json"),
                        event_id=run.event_id)
    return message


def approval_for(client: redis.Redis, blocked_run: str, data_uri: str,
                 dataset_uri: str) -> dict[str, Any]:
    """The record of ``blocked_run``, which a run on ``dataset_uri`` (from ``data_uri``) was
    started to approve; refused, saying why, unless that run is blocked on this very dataset
    (as the local runner refuses an approval whose content changed since)."""
    summary = record.get(client, blocked_run)
    if summary is None or summary.get("status") != "blocked":
        state = "not recorded" if summary is None else summary.get("status")
        raise ApprovalError(f"run {blocked_run} cannot be approved: it is {state}, not blocked")
    if summary.get("dataset_uri") != dataset_uri:
        raise ApprovalError(f"the data at {data_uri} changed since run {blocked_run} was "
                            f"approved (it blocked {summary.get('dataset_uri')}, this run's "
                            f"dataset is {dataset_uri}); validate it again")
    return summary


def keep_approval(client: redis.Redis, blocked: dict[str, Any], by: str, run_id: str,
                  note: str = "") -> None:
    """``blocked`` is approved (who, as the cluster authenticated the approval; the name the
    approval gave, ``note``; when; the checks overruled; the run that trains in its place,
    ``run_id``) and ends ``approved``."""
    untrainable = (blocked.get("validation") or {}).get("untrainable")
    if untrainable:
        raise ApprovalError(f"run {blocked['run_id']} cannot be approved: {untrainable}")
    overruled = [c["name"] for c in (blocked.get("validation") or {}).get("checks", [])
                 if c["status"] == "block"]
    approval = {"by": by or "unknown", "at": time.time(), "overruled": overruled,
                "resumed_as": run_id, **({"note": note} if note else {})}
    try:
        record.approve_blocked(client, blocked["run_id"], approval, status="approved")
    except ValueError as exc:  # approved meanwhile by another request: that one trains
        raise ApprovalError(str(exc)) from None
    if blocked.get("dataset_uri"):  # only once it is approved: later pushes on top of it are
        remember_approved(client, blocked["dataset_uri"])  # judged on what they add
    log.warning("run %s approved by %s%s: trains as %s despite %s", blocked["run_id"],
                by or "unknown", f" (note: {note!r})" if note else "", run_id,
                ", ".join(overruled) or "no blocking check")
