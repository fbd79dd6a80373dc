"""The retrain workflow as an Argo WorkflowTemplate, built with hera from the same steps.

Every template runs the one image's ``retrain`` CLI, which calls the functions the local
runner calls (``retrain step check-cache``, ``retrain step ingest``, ``retrain step
validate``, ``retrain train``): one definition of each step, two orchestrators. Building is
pure: ``build()`` returns the hera object and ``render()`` its YAML; nothing here talks to a
cluster.

    fetch ─► plan ─► source (one Workflow per data path at a time: a mutex named by the plan)
              supersede ─coalesced─► ends (a newer change of the source covers this run)
                 └─► check-cache ──hit──────────────────────────► validate ─► train (per model,
                          └─miss──► ingest (when hit == false) ──┘   │       withParam; not
                                                                     │       when deferred)
                                                        blocked: exit 3, no training starts
                                                    each training emits model.trained → selector
    on exit (whatever the outcome): finish ─► training.failed for each planned training that
                                              never ended; the run's record ended

``fetch`` brings the revision an Argo Events source announced (``--fetch``: the commit or the
bucket state) into a folder of its own on the shared volume and passes on its data URI and
event; with no ``fetch`` parameter (the watcher's events) it passes on the workflow's own.
``plan`` parses the event's whole ``parameters`` object with the local runner's
``RunParameters`` (workflows/plan.py), begins the run's record (the Workflow's name) with the
triggering CloudEvent, and notes that event as its source's newest (``workflows.coalesce``);
each later step adds its part as the local runner would (workflows/cluster_run.py).
``source`` holds the mutex of the run's data path (its name a hash of the path, from the
plan: a person's request waits for the watcher's runs of its path): a Workflow waits there
while another works, first come first served, and ``supersede``, once it has the mutex, ends
the run ``coalesced`` when a run of its source noted later still waits (or has ended having
read the source since).
``finish`` is the Workflow's exit handler (``spec.onExit``): Argo runs it once the DAG has
ended, however it ended (failed, or stopped by the Workflow's deadline; not after ``argo
terminate``, which the round deadline in the shipped configuration covers). For every planned
training of the run that never ended (never created, creation refused, its wait killed or
failed) it deletes the training's TFJob, if any, tells the selector ``training.failed`` (the
trainer's own id, so its round closes, and a second telling is the same event) and records it
failed, then ends the run's record if nothing else did.
``validate`` is the data gate: when a check blocks (the plan's ``validation`` is ``block``)
the step fails with exit code 3, its message naming every failed check, and the trainings,
which depend on ``validate.Succeeded``, are never started; the workflow ends Failed. A run
whose data adds less than ``RETRAIN_MIN_CHANGE`` ends ``deferred``: validate succeeds with
status ``deferred`` and the trainings are skipped.
"""

from __future__ import annotations

import hashlib
from typing import Any

import yaml
from hera.workflows import (
    DAG,
    Container,
    EmptyDirVolume,
    ExistingVolume,
    Parameter,
    WorkflowTemplate,
)
from hera.workflows.models import Metadata, PodGC, PodSecurityContext, TTLStrategy

from workflows.definition_training import (
    MODEL_OUT,
    TRAIN_DEADLINE_SECONDS,
    TRAIN_INPUTS,
    TRAIN_PARAMETERS,
    tfjob_manifest,
    train_dag,
)
from workflows.fetch import FetchUnavailable
from workflows.templates import (
    HOME,
    NAME,
    OUTPUTS,
    POD_LABELS,
    TERMINATION_LOG,
    ClusterNames,
    container,
    fetch_env,
    pod_security,
)

__all__ = ["HOME", "MODEL_OUT", "OUTPUTS", "TERMINATION_LOG", "TRAIN_DEADLINE_SECONDS",
           "TRAIN_PARAMETERS", "ClusterNames", "build", "render", "tfjob_manifest",
           "workflow_name"]  # where the manifests' tests and the CLI look for them

SOURCE_DAG = "source"  # the template holding the data path's mutex
# A Workflow's whole life, the wait for its mutex included (Argo counts it): a day, so that a
# run waiting behind a few full runs of its path is not ended before it runs, which would end
# every change it covers untrained; its own work is bounded by each training's TFJob deadline
WORKFLOW_DEADLINE_SECONDS = 24 * 3600
MUTEX = "{{inputs.parameters.mutex}}"
SOURCE_INPUTS = ("mutex", "source", "cache-policy", "validation", "trainings", "data-uri",
                 *TRAIN_INPUTS)
FETCHED = ("data-uri", "event")  # what the fetch step passes on: the plan's inputs
EXIT_HANDLER = "finish"


# What the Sensor names each Workflow (a Go template with sprig, evaluated by Argo Events on
# the CloudEvent in the webhook's body): one name per (source, id), so a redelivered event is
# refused by the API server instead of starting a second run. ``workflow_name`` is the same.
WORKFLOW_NAME_TEMPLATE = (
    'retrain-{{ printf "%s %s" .Input.body.source .Input.body.id | sha256sum | trunc 20 }}')


def workflow_name(source: str, event_id: str) -> str:
    """The Workflow name the Sensor gives the run an event (``source``, ``event_id``) asks for
    (a CloudEvents source has no spaces, so "source id" is unambiguous)."""
    return "retrain-" + hashlib.sha256(f"{source} {event_id}".encode()).hexdigest()[:20]


def build(names: ClusterNames = ClusterNames()) -> WorkflowTemplate:
    """The WorkflowTemplate: its step templates, the per-model ``train`` DAG, the ``source``
    DAG (the work, under the source's mutex) and the ``retrain`` DAG (the entry point: plan,
    then ``source``), each built inside the template's context, in the order they appear."""
    with _workflow_template(names) as template:
        fetch, plan, supersede = _fetch(names), _plan(names), _supersede(names)
        check, ingest = _check_cache(names), _ingest(names)
        work = _source_dag(supersede, check, ingest, _validate(names), train_dag(names))
        _retrain_dag(fetch, plan, work)
        _finish(names)
    return template


def _workflow_template(names: ClusterNames) -> WorkflowTemplate:
    """The template itself: its arguments (what the Sensor passes), volume and lifetimes."""
    return WorkflowTemplate(
        name=NAME,
        namespace=names.namespace,
        labels={"app.kubernetes.io/part-of": NAME},
        entrypoint="retrain",
        on_exit=EXIT_HANDLER,
        service_account_name=names.service_account,
        arguments=[
            Parameter(name="data-uri", description="the dataset root to (re)train on"),
            Parameter(name="fetch", value="",
                      description="what the fetch step brings onto the shared volume first "
                                  "(a Git push or a bucket notification); \"\": the data is there"),
            Parameter(name="parameters", value="{}",
                      description="the event's parameters object as JSON (RunParameters)"),
            Parameter(name="event-id", value="", description="the triggering CloudEvent's id"),
            Parameter(name="approves", value="",
                      description="the blocked run this one was approved for (retrain approve)"),
            Parameter(name="approved-by", value="", description="the approval's --by: a note"),
            Parameter(name="event", value="", description="the triggering CloudEvent (JSON)"),
        ],
        volumes=[ExistingVolume(name="data", claim_name=names.volume_claim),
                 EmptyDirVolume(name="tmp")],  # every step's /tmp (its root filesystem is read-only)
        security_context=PodSecurityContext(**pod_security()),
        pod_gc=PodGC(strategy="OnPodSuccess"),
        ttl_strategy=TTLStrategy(seconds_after_success=86400, seconds_after_failure=7 * 86400),
        active_deadline_seconds=WORKFLOW_DEADLINE_SECONDS,
        pod_metadata=Metadata(labels=dict(POD_LABELS)),
    )


def _fetch(names: ClusterNames) -> Container:
    """``fetch``: the announced revision onto the shared volume (read-write, with the
    watcher's credentials); outputs the data URI and the event the run is about. A source it
    could not reach in any attempt (exit 75) is tried again by Argo too: the Workflow is named
    from the delivery, so a redelivery would create nothing and the push would be lost."""
    return container(
        "fetch",
        ["step", "fetch", "--fetch", "{{workflow.parameters.fetch}}",
         "--data-uri", "{{workflow.parameters.data-uri}}",
         "--event", "{{workflow.parameters.event}}", "--outputs", OUTPUTS],
        names, cpu="250m", memory="512Mi", outputs=list(FETCHED), env=fetch_env(names),
        transient_exit=FetchUnavailable.exit_code)


def _plan(names: ClusterNames) -> Container:
    """``plan``: the parameters checked, one output each; the run's record begun."""
    return container(
        "plan",
        ["step", "plan", "--data", "{{inputs.parameters.data-uri}}",
         "--parameters", "{{workflow.parameters.parameters}}", "--run-id", "{{workflow.name}}",
         "--event", "{{inputs.parameters.event}}", "--sender", names.approver,
         "--event-id", "{{workflow.parameters.event-id}}", "--outputs", OUTPUTS],
        names, cpu="100m", memory="256Mi", inputs=[Parameter(name=n) for n in FETCHED],
        outputs=["trainings", "cache-policy", "validation", "source", "mutex", *TRAIN_INPUTS])


def _check_cache(names: ClusterNames) -> Container:
    """``check-cache``: fingerprint and the ingestion cache's decision."""
    return container(
        "check-cache",
        ["step", "check-cache", "--data", "{{inputs.parameters.data-uri}}",
         "--cache-policy", "{{inputs.parameters.cache-policy}}",
         "--run-id", "{{workflow.name}}", "--outputs", OUTPUTS],
        names, cpu="250m", memory="512Mi",
        inputs=[Parameter(name="cache-policy"), Parameter(name="data-uri")],
        outputs=["hit", "key", "dataset-uri", "reason"])


def _ingest(names: ClusterNames) -> Container:
    """``ingest``: validated ingestion into the store, recorded under the cache's key."""
    return container(
        "ingest",
        ["step", "ingest", "--data", "{{inputs.parameters.data-uri}}",
         "--key", "{{inputs.parameters.key}}", "--run-id", "{{workflow.name}}",
         "--outputs", OUTPUTS],
        # no TensorFlow: 70,000 images ingested in 3.2 s at 99 MB resident (10.8 s and 600 MB
        # when it framed its shards with TensorFlow)
        names, cpu="1", memory="512Mi", inputs=[Parameter(name="key"), Parameter(name="data-uri")],
        outputs=["dataset-uri", "records", "ingested"])


def _validate(names: ClusterNames) -> Container:
    """``validate``: the data gate on the dataset the trainings would use. Blocked: the run is
    recorded ``blocked``, dataset.rejected goes to the event stream, and the step exits 3
    (Failed, not retried: its retry policy is OnError) with every failed check in the
    container's termination message, which Argo shows as the step's message."""
    return container(
        "validate",
        ["step", "validate", "--dataset-uri", "{{inputs.parameters.dataset-uri}}",
         "--mode", "{{inputs.parameters.validation}}",
         "--data", "{{inputs.parameters.data-uri}}",
         "--parameters", "{{workflow.parameters.parameters}}",
         "--run-id", "{{workflow.name}}", "--event-id", "{{workflow.parameters.event-id}}",
         "--approves", "{{workflow.parameters.approves}}",
         "--approved-by", names.approver, "--approval-note", "{{workflow.parameters.approved-by}}",
         "--sink", names.model_trained_sink, "--outputs", OUTPUTS,
         "--message-file", TERMINATION_LOG],
        names, cpu="1", memory="2Gi", read_only=False,  # the champion judges (TensorFlow)
        inputs=[Parameter(name="dataset-uri"), Parameter(name="validation"),
                Parameter(name="data-uri")],
        outputs=["status", "report", "failed"])


def _supersede(names: ClusterNames) -> Container:
    """``supersede``: the first step under the source's mutex. A newer change of the source
    noted meanwhile ends the run ``coalesced`` (its record names the run covering it, whose
    record lists it): output ``coalesced`` true, and nothing else runs."""
    return container(
        "supersede",
        ["step", "supersede", "--source", "{{inputs.parameters.source}}",
         "--run-id", "{{workflow.name}}", "--outputs", OUTPUTS],
        names, cpu="50m", memory="128Mi", inputs=[Parameter(name="source")],
        outputs=["coalesced", "covered-by"])


def _source_dag(supersede: Container, check: Container, ingest: Container,
                validate: Container, train: DAG) -> DAG:
    """``source``: the run's work, one Workflow per source at a time (the mutex is added by
    ``render``: see ``_with_mutex``). supersede ─► check-cache ─miss─► ingest, then
    ``validate`` once the dataset is there (ingested or a hit), then ``train`` for each of
    the plan's trainings only if the data gate let the run through and did not defer it."""
    def given(name: str) -> str:
        return f"{{{{inputs.parameters.{name}}}}}"

    with DAG(name=SOURCE_DAG, inputs=[Parameter(name=n) for n in SOURCE_INPUTS]) as source:
        superseded = supersede(name="supersede", arguments={"source": given("source")})
        data = {"data-uri": given("data-uri")}
        checked = check(name="check-cache",
                        arguments={"cache-policy": given("cache-policy"), **data},
                        when=f"{superseded.get_parameter('coalesced').value} == false")
        ingested = ingest(
            name="ingest",
            arguments={"key": checked.get_parameter("key").value, **data},
            when=f"{checked.get_parameter('hit').value} == false",
        )
        validated = validate(
            name="validate",
            arguments={"dataset-uri": checked.get_parameter("dataset-uri").value,
                       "validation": given("validation"), **data},
        )
        trained = train(
            name="train",
            arguments={
                "model": "{{item.model}}",
                "warm-start": "{{item.warm-start}}",
                "dataset-uri": checked.get_parameter("dataset-uri").value,
                **{n: given(n) for n in TRAIN_INPUTS},
            },
            with_param=given("trainings"),
            when=f"{validated.get_parameter('status').value} != deferred",
        )
        superseded >> checked >> ingested
        # a coalesced run skips check-cache: "check-cache.Succeeded" leaves the rest Omitted
        ingested.depends = "check-cache.Succeeded"
        validated.depends = "check-cache.Succeeded && (ingest.Succeeded || ingest.Skipped)"
        # a blocked validate (Failed) leaves every training Omitted and the workflow Failed
        trained.depends = "check-cache.Succeeded && validate.Succeeded"
    return source


def _retrain_dag(fetch: Container, plan: Container, source: DAG) -> DAG:
    """``retrain``, the entry point: ``fetch``, then ``plan`` on what it fetched (outside
    the mutex, so a waiting Workflow's event is noted as its source's newest), then
    ``source`` with the plan's outputs and the fetched data URI."""
    with DAG(name="retrain") as retrain:
        fetched = fetch(name="fetch")
        planned = plan(name="plan", arguments={
            n: fetched.get_parameter(n).value for n in FETCHED})
        worked = source(name="source", arguments={
            n: (fetched if n == "data-uri" else planned).get_parameter(n).value
            for n in SOURCE_INPUTS})
        fetched >> planned >> worked
    return retrain


def _finish(names: ClusterNames) -> Container:
    """``finish``, the exit handler: every planned training that never ended told failed
    (its TFJob deleted first, so it cannot end later), the run's record ended."""
    return container(
        EXIT_HANDLER,
        ["step", "finish", "--run-id", "{{workflow.name}}", "--workflow-uid", "{{workflow.uid}}",
         "--namespace", "{{workflow.namespace}}", "--status", "{{workflow.status}}",
         "--sink", names.model_trained_sink],
        names, cpu="50m", memory="128Mi")


def _with_mutex(doc: dict[str, Any]) -> dict[str, Any]:
    """The ``source`` template holding its source's mutex. Argo v3.5 (what the runbook
    installs) reads ``synchronization.mutex``; hera's models follow v3.6, which renamed it
    ``mutexes`` (and still reads ``mutex``), and drop the older field: it is set here."""
    templates = [{**t, "synchronization": {"mutex": {"name": MUTEX}}}
                 if t["name"] == SOURCE_DAG else t for t in doc["spec"]["templates"]]
    return {**doc, "spec": {**doc["spec"], "templates": templates}}


def render(names: ClusterNames = ClusterNames()) -> str:
    """The WorkflowTemplate as YAML (what ``retrain workflow render`` prints)."""
    return yaml.safe_dump(_with_mutex(build(names).to_dict()), sort_keys=False)
