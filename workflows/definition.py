"""The retrain workflow as an Argo WorkflowTemplate, built with hera from the same steps.

Every template runs the one image's ``retrain`` CLI, which calls the functions the local
runner calls (``retrain step check-cache``, ``retrain step ingest``, ``retrain step
validate``, ``retrain train``): one definition of each step, two orchestrators. Building is
pure: ``build()`` returns the hera object and ``render()`` its YAML; nothing here talks to a
cluster.

    plan ─► check-cache ──hit──────────────────────────► validate ─► train (per model, withParam):
                 └─miss──► ingest (when hit == false) ──┘   │ blocked:   check-training ─hit─►
                                                            │ exit 3      │     model.trained
                                                            ▼             └─miss─► TFJob ─►
                                           no training starts                  wait-training
                                                    each training emits model.trained → selector

``plan`` parses the event's whole ``parameters`` object with the local runner's
``RunParameters`` (workflows/plan.py), so every run parameter reaches the cluster, and begins
the run's record (the Workflow's name) with the triggering CloudEvent; each later step adds
its part as the local runner would (workflows/cluster_run.py).
``validate`` is the data gate: when a check blocks (the plan's ``validation`` is ``block``)
the step fails with exit code 3, its message naming every failed check, and the trainings,
which depend on ``validate.Succeeded``, are never started; the workflow ends Failed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import yaml
from hera.workflows import (
    DAG,
    ConfigMapEnvFrom,
    Container,
    Env,
    ExistingVolume,
    Parameter,
    Resource,
    RetryStrategy,
    SecretEnv,
    WorkflowTemplate,
)
from hera.workflows.models import Backoff, Metadata, PodGC, TTLStrategy, VolumeMount

from services.trainer.options import train_argv

NAME = "retrain"
HOME = "/var/lib/retrain"  # RETRAIN_HOME on the shared volume: store, runs, stat caches
OUTPUTS = "/tmp/outputs"
# Kubernetes keeps what a container writes here as its termination message, and Argo shows a
# failed step's as "main: Error (exit code N): <message>"
TERMINATION_LOG = "/dev/termination-log"
_REPLICAS = 987654321  # stands for the workers parameter while the manifest is dumped
TRAIN_DEADLINE_SECONDS = 4 * 3600  # one training, on the TFJob (the workflow's is 6 h)


@dataclass(frozen=True)
class ClusterNames:
    """Names the WorkflowTemplate refers to; the manifests define each of them."""

    image: str = "ghcr.io/retrain-dev/retrain:0.1.0"
    namespace: str = "retrain"
    service_account: str = "retrain-workflow"
    trainer_service_account: str = "retrain-trainer"
    volume_claim: str = "retrain-data"
    config_map: str = "retrain-config"
    model_trained_sink: str = "stream"  # the Redis stream the selector consumes (--stream)
    redis_secret: str = "retrain-redis"  # key url: RETRAIN_REDIS_URL, with its password
    api_keys_secret: str = "retrain-api-keys"  # key keys: RETRAIN_API_KEYS, sent with events
    webhook_token_secret: str = "retrain-webhook-token"  # the webhook EventSource's token

    @property
    def approver(self) -> str:  # who approved, as the cluster can tell: the webhook's token
        return f"token:{self.webhook_token_secret}"


# every pod of the workflow and its TFJobs talks to Redis and may send events: the
# NetworkPolicies (manifests/base/networkpolicies.yaml) admit pods by these labels
POD_LABELS = {"retrain.dev/redis-client": "true", "retrain.dev/event-sender": "true"}


def _secrets(names: ClusterNames) -> list[tuple[str, str, str]]:
    """(variable, Secret, key) of what no ConfigMap may hold."""
    return [("RETRAIN_REDIS_URL", names.redis_secret, "url"),
            ("RETRAIN_API_KEYS", names.api_keys_secret, "keys")]


def _secret_env(names: ClusterNames) -> list[SecretEnv]:
    return [SecretEnv(name=n, secret_name=s, secret_key=k) for n, s, k in _secrets(names)]


def _container(name: str, args: list[str], names: ClusterNames, cpu: str, memory: str,
               inputs: list[Parameter] | None = None,
               outputs: list[str] | None = None) -> Container:
    from hera.workflows import Resources

    return Container(
        name=name,
        image=names.image,
        command=["retrain"],
        args=args,
        inputs=inputs,
        outputs=[Parameter(name=o, value_from={"path": f"{OUTPUTS}/{o}"}) for o in outputs or []],
        env=[Env(name="RETRAIN_HOME", value=HOME), *_secret_env(names)],
        env_from=[ConfigMapEnvFrom(name=names.config_map)],
        volume_mounts=[VolumeMount(name="data", mount_path=HOME)],
        resources=Resources(cpu_request=cpu, memory_request=memory, memory_limit=memory),
        retry_strategy=RetryStrategy(
            limit=3, retry_policy="OnError",
            backoff=Backoff(duration="10s", factor=2, max_duration="5m")),
    )


def tfjob_manifest(names: ClusterNames) -> str:
    """The TFJob one training runs as; Argo fills ``{{...}}`` from the task's inputs."""
    trainer = {
        "name": "tensorflow",  # the container name the Training Operator expects
        "image": names.image,
        "command": ["retrain"],
        "args": train_argv({
            "model": "{{inputs.parameters.model}}",
            "dataset": "{{inputs.parameters.dataset-uri}}",
            "out": MODEL_OUT,
            "run_id": "{{workflow.name}}",
            "epochs": "{{inputs.parameters.epochs}}",
            "steps_per_epoch": "{{inputs.parameters.steps-per-epoch}}",
            "batch_size": "{{inputs.parameters.batch-size}}",
            "learning_rate": "{{inputs.parameters.learning-rate}}",
            "checkpoint_every": 100,  # a restarted worker resumes from here
            "warm_start": "{{inputs.parameters.warm-start}}",  # "" when there is none
            "sink": names.model_trained_sink,
            "round_size": "{{inputs.parameters.round-size}}",
        }),
        "env": [{"name": "RETRAIN_HOME", "value": HOME},
                {"name": "TF_USE_LEGACY_KERAS", "value": "1"},
                *({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
                  for name, secret, key in _secrets(names))],
        "envFrom": [{"configMapRef": {"name": names.config_map}}],
        "volumeMounts": [{"name": "data", "mountPath": HOME}],
        "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "4Gi"}},
    }
    pod = {
        "metadata": {"labels": dict(POD_LABELS)},
        "spec": {
            "serviceAccountName": names.trainer_service_account,
            "containers": [trainer],
            "volumes": [{"name": "data",
                         "persistentVolumeClaim": {"claimName": names.volume_claim}}],
        },
    }
    job = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "TFJob",
        "metadata": {
            "generateName": "{{workflow.name}}-train-",
            "namespace": names.namespace,
            "labels": {"app.kubernetes.io/part-of": NAME,
                       "retrain.dev/run-id": "{{workflow.name}}",
                       "retrain.dev/model": "{{inputs.parameters.model}}"},
        },
        "spec": {
            # the Training Operator fails the job after 3 restarts or past the deadline (its
            # Failed condition ends the wait step), and removes its pods once it has ended
            "runPolicy": {"cleanPodPolicy": "All", "backoffLimit": 3,
                          "activeDeadlineSeconds": TRAIN_DEADLINE_SECONDS,
                          "ttlSecondsAfterFinished": 86400},
            "tfReplicaSpecs": {
                # all workers run the same code; worker 0 acts as chief and alone keeps the model.
                # ExitCode: a worker killed from outside (exit 128+, e.g. OOM or eviction) is
                # restarted and resumes from its checkpoint; an error of ours (1-127) is final
                "Worker": {"replicas": _REPLICAS,
                           "restartPolicy": "ExitCode", "template": pod},
            },
        },
    }
    # an integer once Argo substitutes it: YAML would quote the placeholder into a string
    return yaml.safe_dump(job, sort_keys=False).replace(
        f"replicas: {_REPLICAS}", "replicas: {{inputs.parameters.workers}}")


# What the Sensor names each Workflow (a Go template with sprig, evaluated by Argo Events on
# the CloudEvent in the webhook's body): one name per (source, id), so a redelivered event is
# refused by the API server instead of starting a second run. ``workflow_name`` is the same.
WORKFLOW_NAME_TEMPLATE = (
    'retrain-{{ printf "%s %s" .Input.body.source .Input.body.id | sha256sum | trunc 20 }}')


def workflow_name(source: str, event_id: str) -> str:
    """The Workflow name the Sensor gives the run an event (``source``, ``event_id``) asks for
    (a CloudEvents source has no spaces, so "source id" is unambiguous)."""
    return "retrain-" + hashlib.sha256(f"{source} {event_id}".encode()).hexdigest()[:20]


TRAIN_INPUTS = ("epochs", "steps-per-epoch", "batch-size", "learning-rate", "workers", "round-size",
                "train-cache", "force")
TRAIN_PARAMETERS = ("model", "warm-start", "dataset-uri", *TRAIN_INPUTS)
MODEL_OUT = f"{HOME}/runs/{{{{workflow.name}}}}/{{{{inputs.parameters.model}}}}/model"


def build(names: ClusterNames = ClusterNames()) -> WorkflowTemplate:
    """The WorkflowTemplate: its step templates, the per-model ``train`` DAG, and the
    ``retrain`` DAG that wires them (each built inside the template's context, in the order
    they appear in it)."""
    with _workflow_template(names) as template:
        plan, check, ingest = _plan(names), _check_cache(names), _ingest(names)
        _retrain_dag(plan, check, ingest, _validate(names), _train_dag(names))
    return template


def _workflow_template(names: ClusterNames) -> WorkflowTemplate:
    """The template itself: its arguments (what the Sensor passes), volume and lifetimes."""
    return WorkflowTemplate(
        name=NAME,
        namespace=names.namespace,
        labels={"app.kubernetes.io/part-of": NAME},
        entrypoint="retrain",
        service_account_name=names.service_account,
        arguments=[
            Parameter(name="data-uri", description="the dataset root to (re)train on"),
            Parameter(name="digest", value="", description="the dataset digest the event saw"),
            Parameter(name="parameters", value="{}",
                      description="the event's parameters object as JSON (RunParameters)"),
            Parameter(name="event-id", value="", description="the triggering CloudEvent's id"),
            Parameter(name="approves", value="",
                      description="the blocked run this one was approved for (retrain approve)"),
            Parameter(name="approved-by", value="", description="the approval's --by: a note"),
            Parameter(name="event", value="", description="the triggering CloudEvent (JSON)"),
        ],
        volumes=[ExistingVolume(name="data", claim_name=names.volume_claim)],
        pod_gc=PodGC(strategy="OnPodSuccess"),
        ttl_strategy=TTLStrategy(seconds_after_success=86400, seconds_after_failure=7 * 86400),
        active_deadline_seconds=6 * 3600,
        pod_metadata=Metadata(labels=dict(POD_LABELS)),
    )


def _plan(names: ClusterNames) -> Container:
    """``plan``: the parameters checked, one output each; the run's record begun."""
    return _container(
        "plan",
        ["step", "plan", "--data", "{{workflow.parameters.data-uri}}",
         "--parameters", "{{workflow.parameters.parameters}}", "--run-id", "{{workflow.name}}",
         "--event", "{{workflow.parameters.event}}", "--sender", names.approver,
         "--event-id", "{{workflow.parameters.event-id}}", "--outputs", OUTPUTS],
        names, cpu="100m", memory="256Mi",
        outputs=["trainings", "cache-policy", "validation", *TRAIN_INPUTS])


def _check_cache(names: ClusterNames) -> Container:
    """``check-cache``: fingerprint and the ingestion cache's decision."""
    return _container(
        "check-cache",
        ["step", "check-cache", "--data", "{{workflow.parameters.data-uri}}",
         "--cache-policy", "{{inputs.parameters.cache-policy}}",
         "--run-id", "{{workflow.name}}", "--outputs", OUTPUTS],
        names, cpu="250m", memory="512Mi", inputs=[Parameter(name="cache-policy")],
        outputs=["hit", "key", "digest", "dataset-uri", "reason"])


def _ingest(names: ClusterNames) -> Container:
    """``ingest``: validated ingestion into the store, recorded under the cache's key."""
    return _container(
        "ingest",
        ["step", "ingest", "--data", "{{workflow.parameters.data-uri}}",
         "--key", "{{inputs.parameters.key}}", "--run-id", "{{workflow.name}}",
         "--outputs", OUTPUTS],
        names, cpu="1", memory="2Gi", inputs=[Parameter(name="key")],
        outputs=["dataset-uri", "records", "ingested"])


def _validate(names: ClusterNames) -> Container:
    """``validate``: the data gate on the dataset the trainings would use. Blocked: the run is
    recorded ``blocked``, dataset.rejected goes to the event stream, and the step exits 3
    (Failed, not retried: its retry policy is OnError) with every failed check in the
    container's termination message, which Argo shows as the step's message."""
    return _container(
        "validate",
        ["step", "validate", "--dataset-uri", "{{inputs.parameters.dataset-uri}}",
         "--mode", "{{inputs.parameters.validation}}",
         "--data", "{{workflow.parameters.data-uri}}",
         "--parameters", "{{workflow.parameters.parameters}}",
         "--run-id", "{{workflow.name}}", "--event-id", "{{workflow.parameters.event-id}}",
         "--approves", "{{workflow.parameters.approves}}",
         "--approved-by", names.approver, "--approval-note", "{{workflow.parameters.approved-by}}",
         "--sink", names.model_trained_sink, "--outputs", OUTPUTS,
         "--message-file", TERMINATION_LOG],
        names, cpu="1", memory="2Gi",  # the champion judges the new labels (TensorFlow)
        inputs=[Parameter(name="dataset-uri"), Parameter(name="validation")],
        outputs=["status", "report", "failed"])


def _create_training(names: ClusterNames) -> Resource:
    """``create-training``: the TFJob of one model's training, owned by the Workflow."""
    return Resource(
        name="create-training",
        inputs=[Parameter(name=n) for n in TRAIN_PARAMETERS],
        action="create",
        set_owner_reference=True,  # deleted with the Workflow
        manifest=tfjob_manifest(names),
        outputs=[Parameter(name="job-name", value_from={"jsonPath": "{.metadata.name}"})],
        retry_strategy=RetryStrategy(
            limit=2, retry_policy="OnError",
            backoff=Backoff(duration="30s", factor=2, max_duration="10m")),
    )


def _wait_training(names: ClusterNames) -> Container:
    """``wait-training``: the TFJob's own Succeeded/Failed condition ends the training.

    A TFJob that fails on its own (workers OOM-killed past the backoff limit, the deadline)
    never lets its trainer say so: the wait step tells the selector instead."""
    return _container(
        "wait-training",
        ["step", "wait-training", "--name", "{{inputs.parameters.job-name}}",
         "--namespace", "{{workflow.namespace}}",
         "--timeout", str(TRAIN_DEADLINE_SECONDS + 600),  # the TFJob's own deadline first
         "--run-id", "{{workflow.name}}", "--model", "{{inputs.parameters.model}}",
         "--round-size", "{{inputs.parameters.round-size}}",
         "--sink", names.model_trained_sink,
         "--claim", MODEL_OUT.removesuffix("/model") + "/claim.json"],
        names, cpu="50m", memory="128Mi",
        inputs=[Parameter(name=n) for n in ("job-name", "model", "round-size")])


def _check_training(names: ClusterNames) -> Container:
    """``check-training``: the training cache, per model. A hit creates no TFJob (its
    recorded model goes to the selector); a miss holds the key's lease, which the wait step
    renews, then records."""
    return _container(
        "check-training",
        ["step", "check-training", "--model", "{{inputs.parameters.model}}",
         "--dataset-uri", "{{inputs.parameters.dataset-uri}}", "--out", MODEL_OUT,
         "--warm-start", "{{inputs.parameters.warm-start}}",
         *(arg for n in ("epochs", "steps-per-epoch", "batch-size", "learning-rate",
                         "workers", "train-cache", "force", "round-size")
           for arg in (f"--{n}", f"{{{{inputs.parameters.{n}}}}}")),
         "--run-id", "{{workflow.name}}", "--sink", names.model_trained_sink,
         "--outputs", OUTPUTS],
        names, cpu="100m", memory="256Mi", inputs=[Parameter(name=n) for n in TRAIN_PARAMETERS],
        outputs=["hit", "reason", "key", "model-uri"])


def _train_dag(names: ClusterNames) -> DAG:
    """``train``, one model: check-training ─miss─► create-training ─► wait-training."""
    create, wait, memo = _create_training(names), _wait_training(names), _check_training(names)
    with DAG(name="train", inputs=[Parameter(name=n) for n in TRAIN_PARAMETERS]) as train:
        every = {n: f"{{{{inputs.parameters.{n}}}}}" for n in TRAIN_PARAMETERS}
        checked_training = memo(name="check", arguments=every)
        created = create(name="create", arguments=every,
                         when=f"{checked_training.get_parameter('hit').value} == false")
        waited = wait(name="wait", arguments={
            "job-name": created.get_parameter("job-name").value,
            "model": "{{inputs.parameters.model}}",
            "round-size": "{{inputs.parameters.round-size}}"})
        checked_training >> created >> waited
        # a bare "create" would also match create.Skipped (a hit): no job to wait for
        created.depends, waited.depends = "check.Succeeded", "create.Succeeded"
    return train


def _retrain_dag(plan: Container, check: Container, ingest: Container, validate: Container,
                 train: DAG) -> DAG:
    """``retrain``, the entry point: plan ─► check-cache ─miss─► ingest, then ``validate`` once
    the dataset is there (ingested or a hit), then ``train`` for each of the plan's trainings
    only if the data gate let the run through."""
    with DAG(name="retrain") as retrain:
        planned = plan(name="plan")
        checked = check(name="check-cache",
                        arguments={"cache-policy": planned.get_parameter("cache-policy").value})
        ingested = ingest(
            name="ingest",
            arguments={"key": checked.get_parameter("key").value},
            when=f"{checked.get_parameter('hit').value} == false",
        )
        validated = validate(
            name="validate",
            arguments={"dataset-uri": checked.get_parameter("dataset-uri").value,
                       "validation": planned.get_parameter("validation").value},
        )
        trained = train(
            name="train",
            arguments={
                "model": "{{item.model}}",
                "warm-start": "{{item.warm-start}}",
                "dataset-uri": checked.get_parameter("dataset-uri").value,
                **{n: planned.get_parameter(n).value for n in TRAIN_INPUTS},
            },
            with_param=planned.get_parameter("trainings").value,
        )
        planned >> checked >> ingested
        validated.depends = ("plan.Succeeded && check-cache.Succeeded && "
                             "(ingest.Succeeded || ingest.Skipped)")
        # a blocked validate (Failed) leaves every training Omitted and the workflow Failed
        trained.depends = "plan.Succeeded && check-cache.Succeeded && validate.Succeeded"
    return retrain


def render(names: ClusterNames = ClusterNames()) -> str:
    """The WorkflowTemplate as YAML (what ``retrain workflow render`` prints)."""
    return yaml.safe_dump(build(names).to_dict(), sort_keys=False)
