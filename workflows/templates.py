"""What every template of the WorkflowTemplate shares: the names the manifests define, the
shared volume, where a step writes its outputs, and the one way a step's container is made
(the image's ``retrain`` CLI, Redis and the API keys from Secrets, the ConfigMap, retries)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hera.workflows import ConfigMapEnvFrom, Container, Env, Parameter, RetryStrategy, SecretEnv
from hera.workflows.models import Backoff, SecurityContext, VolumeMount

NAME = "retrain"
HOME = "/var/lib/retrain"  # RETRAIN_HOME on the shared volume: store, runs, stat caches
OUTPUTS = "/tmp/outputs"
# Kubernetes keeps what a container writes here as its termination message, and Argo shows a
# failed step's as "main: Error (exit code N): <message>"
TERMINATION_LOG = "/dev/termination-log"
TMP = "/tmp"  # an emptyDir in every step's pod: the outputs and temporary files, never the image
RUN_AS = 10001  # the Dockerfile's user (USER 10001): the image runs as no one else


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
    # what the fetch step reads a bucket or a private repository with: the watcher's own
    # credentials (overlay local-bucket's MinIO Secret; a Git token where one is needed),
    # optional, so an overlay without them still runs the steps that need none
    s3_secret: str = "retrain-minio"  # keys accesskey, secretkey: AWS_ACCESS_KEY_ID, ..._SECRET
    git_secret: str = "retrain-git"  # key token: RETRAIN_GIT_TOKEN

    @property
    def approver(self) -> str:  # who approved, as the cluster can tell: the webhook's token
        return f"token:{self.webhook_token_secret}"


# every pod of the workflow and its TFJobs talks to Redis and may send events: the
# NetworkPolicies (manifests/base/networkpolicies.yaml) admit pods by these labels
POD_LABELS = {"retrain.dev/redis-client": "true", "retrain.dev/event-sender": "true"}


def secrets(names: ClusterNames) -> list[tuple[str, str, str]]:
    """(variable, Secret, key) of what no ConfigMap may hold."""
    return [("RETRAIN_REDIS_URL", names.redis_secret, "url"),
            ("RETRAIN_API_KEYS", names.api_keys_secret, "keys")]


def pod_security() -> dict[str, Any]:
    """Every pod of the workflow and its TFJobs: the image's own non-root user, the runtime's
    default seccomp profile, the shared volume's files group-writable (fsGroup)."""
    return {"runAsNonRoot": True, "runAsUser": RUN_AS, "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"}}


def container_security(read_only: bool) -> dict[str, Any]:
    """Every container: no privilege escalation, no capability; ``read_only``: its root
    filesystem too, for a step that writes only to mounted volumes (the shared volume, /tmp,
    the termination log). TensorFlow's steps keep theirs writable: its libraries may write
    caches under the home folder."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": read_only, "runAsNonRoot": True, "runAsUser": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"}}


def fetch_env(names: ClusterNames) -> list[Env]:
    """The fetch step's credentials, as the watcher's Deployment gets them (each optional)."""
    return [SecretEnv(name="AWS_ACCESS_KEY_ID", secret_name=names.s3_secret,
                      secret_key="accesskey", optional=True),
            SecretEnv(name="AWS_SECRET_ACCESS_KEY", secret_name=names.s3_secret,
                      secret_key="secretkey", optional=True),
            Env(name="AWS_DEFAULT_REGION", value="us-east-1"),
            SecretEnv(name="RETRAIN_GIT_TOKEN", secret_name=names.git_secret,
                      secret_key="token", optional=True)]


def retry_strategy(transient_exit: int | None = None) -> RetryStrategy:
    """Every step is retried on an error of the pod (Argo's, the node's), never on its own
    failure (a blocked data gate, a bad spec). ``transient_exit``: the exit code by which a
    step says "the source could not be reached, try later", retried too (retryPolicy Always
    with an expression keeping every other failure final)."""
    backoff = Backoff(duration="10s", factor=2, max_duration="5m")
    if transient_exit is None:
        return RetryStrategy(limit=3, retry_policy="OnError", backoff=backoff)
    return RetryStrategy(
        limit=3, retry_policy="Always", backoff=backoff,
        expression=f'lastRetry.status == "Error" || lastRetry.exitCode == "{transient_exit}"')


def container(name: str, args: list[str], names: ClusterNames, cpu: str, memory: str,
              inputs: list[Parameter] | None = None,
              outputs: list[str] | None = None, *, read_only: bool = True,
              env: list[Env] | None = None, transient_exit: int | None = None) -> Container:
    from hera.workflows import Resources

    return Container(
        name=name,
        image=names.image,
        command=["retrain"],
        args=args,
        inputs=inputs,
        outputs=[Parameter(name=o, value_from={"path": f"{OUTPUTS}/{o}"}) for o in outputs or []],
        env=[Env(name="RETRAIN_HOME", value=HOME),
             *(SecretEnv(name=n, secret_name=s, secret_key=k) for n, s, k in secrets(names)),
             *(env or [])],
        env_from=[ConfigMapEnvFrom(name=names.config_map)],
        volume_mounts=[VolumeMount(name="data", mount_path=HOME),
                       VolumeMount(name="tmp", mount_path=TMP)],
        security_context=SecurityContext(**container_security(read_only)),
        resources=Resources(cpu_request=cpu, memory_request=memory, memory_limit=memory),
        retry_strategy=retry_strategy(transient_exit),
    )
