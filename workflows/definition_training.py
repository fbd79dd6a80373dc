"""The WorkflowTemplate's trainings, one model each: the training cache's check, the TFJob
(``tfjob_manifest``) and the wait for its end, wired as the ``train`` DAG
(``workflows.definition`` runs it for each of the plan's trainings).

    check-training ─hit──► model.trained (the cached model)
          └─miss─► create-training (a TFJob) ─► wait-training

Each TFJob's name is the training's own (``workflows.tfjob.tfjob_name``: the Workflow's name
and uid, the model), so a create retried after a lost answer finds its job (409) and adopts
it, once it has checked the job is this training's, and the exit handler knows which job a
training that never ended left behind.

A killed worker (OOM, eviction, a lost node) takes MultiWorkerMirroredStrategy's collectives
down with it: its peers' all-reduce fails, and they exit with an error too. The workers'
restart policy is therefore ``OnFailure``: every worker that exits is restarted, all of them
rejoin and resume from the last checkpoint (BackupAndRestore, every 100 steps), as
TensorFlow's fault tolerance expects of a cluster manager. The TFJob's ``backoffLimit`` counts
those restarts (``RESTARTS_PER_WORKER`` for each worker); a training that keeps failing (an
error of ours) fails its job once they are spent, or at its deadline.
"""

from __future__ import annotations

import yaml
from hera.workflows import DAG, Container, Parameter

from services.trainer.options import train_argv
from workflows.templates import (
    HOME,
    NAME,
    OUTPUTS,
    POD_LABELS,
    ClusterNames,
    container,
    container_security,
    pod_security,
    secrets,
)
from workflows.tfjob import RESTARTS_PER_WORKER

_REPLICAS = 987654321  # stands for the workers parameter while the manifest is dumped
TRAIN_DEADLINE_SECONDS = 4 * 3600  # one training, on the TFJob (the workflow's is 24 h)

TRAIN_INPUTS = ("epochs", "steps-per-epoch", "batch-size", "learning-rate", "workers", "round-size",
                "train-cache", "force", "deterministic")
TRAIN_PARAMETERS = ("model", "warm-start", "dataset-uri", *TRAIN_INPUTS)
MODEL_OUT = f"{HOME}/runs/{{{{workflow.name}}}}/{{{{inputs.parameters.model}}}}/model"
CLAIM = MODEL_OUT.removesuffix("/model") + "/claim.json"  # check-training's, for the next steps


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
            "deterministic": "{{inputs.parameters.deterministic}}",
        }),
        "env": [{"name": "RETRAIN_HOME", "value": HOME},
                {"name": "TF_USE_LEGACY_KERAS", "value": "1"},
                *({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
                  for name, secret, key in secrets(names))],
        "envFrom": [{"configMapRef": {"name": names.config_map}}],
        "volumeMounts": [{"name": "data", "mountPath": HOME}],
        "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "4Gi"}},
        # TensorFlow may write caches under the home folder: the root filesystem stays writable
        "securityContext": container_security(read_only=False),
    }
    pod = {
        "metadata": {"labels": dict(POD_LABELS)},
        "spec": {
            "serviceAccountName": names.trainer_service_account,
            "securityContext": pod_security(),
            "containers": [trainer],
            "volumes": [{"name": "data",
                         "persistentVolumeClaim": {"claimName": names.volume_claim}}],
        },
    }
    job = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "TFJob",
        "metadata": {  # its name, owner and workflow-uid label: create-training's to set
            "namespace": names.namespace,
            "labels": {"app.kubernetes.io/part-of": NAME,
                       "retrain.dev/run-id": "{{workflow.name}}",
                       "retrain.dev/model": "{{inputs.parameters.model}}"},
        },
        "spec": {
            # the Training Operator fails the job once its restarts are spent (backoffLimit:
            # create-training sets RESTARTS_PER_WORKER per worker) or past the deadline (its
            # Failed condition ends the wait step), and removes its pods once it has ended
            "runPolicy": {"cleanPodPolicy": "All", "backoffLimit": RESTARTS_PER_WORKER,
                          "activeDeadlineSeconds": TRAIN_DEADLINE_SECONDS,
                          "ttlSecondsAfterFinished": 86400},
            "tfReplicaSpecs": {
                # all workers run the same code; worker 0 acts as chief and alone keeps the model.
                # OnFailure: a killed worker fails its peers' all-reduce; each is restarted and
                # all resume together from the last checkpoint (see the module's docstring)
                "Worker": {"replicas": _REPLICAS,
                           "restartPolicy": "OnFailure", "template": pod},
            },
        },
    }
    # an integer once Argo substitutes it: YAML would quote the placeholder into a string
    return yaml.safe_dump(job, sort_keys=False).replace(
        f"replicas: {_REPLICAS}", "replicas: {{inputs.parameters.workers}}")


def create_training(names: ClusterNames) -> Container:
    """``create-training``: the TFJob of one model's training, named for the training and
    owned by the Workflow (deleted with it); an existing job of this training is adopted. A
    job the API server refuses is the training's outcome: told to the selector, recorded."""
    return container(
        "create-training",
        ["step", "create-training", "--manifest", tfjob_manifest(names),
         "--workflow-uid", "{{workflow.uid}}", "--namespace", "{{workflow.namespace}}",
         "--run-id", "{{workflow.name}}", "--model", "{{inputs.parameters.model}}",
         "--round-size", "{{inputs.parameters.round-size}}",
         "--sink", names.model_trained_sink, "--claim", CLAIM, "--outputs", OUTPUTS],
        names, cpu="50m", memory="128Mi", inputs=[Parameter(name=n) for n in TRAIN_PARAMETERS],
        outputs=["job-name"])


def wait_training(names: ClusterNames) -> Container:
    """``wait-training``: the TFJob's own Succeeded/Failed condition ends the training.

    A TFJob that fails on its own (workers OOM-killed past the backoff limit, the deadline)
    never lets its trainer say so: the wait step tells the selector instead."""
    return container(
        "wait-training",
        ["step", "wait-training", "--name", "{{inputs.parameters.job-name}}",
         "--namespace", "{{workflow.namespace}}",
         "--timeout", str(TRAIN_DEADLINE_SECONDS + 600),  # the TFJob's own deadline first
         "--run-id", "{{workflow.name}}", "--model", "{{inputs.parameters.model}}",
         "--round-size", "{{inputs.parameters.round-size}}",
         "--sink", names.model_trained_sink,
         "--claim", CLAIM],
        names, cpu="50m", memory="128Mi",
        inputs=[Parameter(name=n) for n in ("job-name", "model", "round-size")])


def check_training(names: ClusterNames) -> Container:
    """``check-training``: the training cache, per model. A hit creates no TFJob (its
    recorded model goes to the selector); a miss holds the key's lease, which the wait step
    renews, then records."""
    return container(
        "check-training",
        ["step", "check-training", "--model", "{{inputs.parameters.model}}",
         "--dataset-uri", "{{inputs.parameters.dataset-uri}}", "--out", MODEL_OUT,
         "--warm-start", "{{inputs.parameters.warm-start}}",
         *(arg for n in ("epochs", "steps-per-epoch", "batch-size", "learning-rate",
                         "workers", "train-cache", "force", "deterministic", "round-size")
           for arg in (f"--{n}", f"{{{{inputs.parameters.{n}}}}}")),
         "--run-id", "{{workflow.name}}", "--sink", names.model_trained_sink,
         "--outputs", OUTPUTS],
        names, cpu="100m", memory="256Mi", inputs=[Parameter(name=n) for n in TRAIN_PARAMETERS],
        outputs=["hit", "reason", "key", "model-uri"])


def train_dag(names: ClusterNames) -> DAG:
    """``train``, one model: check-training ─miss─► create-training ─► wait-training."""
    create, wait, memo = create_training(names), wait_training(names), check_training(names)
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
