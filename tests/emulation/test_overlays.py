"""Every pod and step of an overlay runs here first (issue 29): the overlay's own containers,
started from their rendered command, arguments and environment by an emulated kubelet, with
only the cluster's controllers emulated (``tests/emulation``). For overlays ``local`` and
``local-bucket``, in order, one cluster per overlay, each pod and step run once: what an
overlay renders exactly as ``local`` does (a Deployment's object and the environment it
resolves to; the WorkflowTemplate's trainings) is run in ``local`` only.

- the watcher, selector and dashboard Deployments answer their probes within the times they
  declare;
- the watcher's dataset event passes the webhook EventSource and the Sensor, which names the
  Workflow from the event and passes its parameters;
- a one-model, two-worker request for the same data (sent to the EventSource as ``retrain
  publish`` sends it) runs the Workflow from its WorkflowTemplate, every step's outputs read
  where the next takes them, the training as a TFJob whose two replicas read the TF_CONFIG the
  Training Operator gives them, and the selector Deployment judges the model;
- in ``local-bucket``, the watcher's event for the bucket's data runs the steps up to
  validation (the trainings' templates are local's);
- two predictor pods of one revision, laid out as KServe lays them out, serve the champion,
  answer their probes, and the guard's reading (``PodsSource``) adds up both pods' figures.

One setting is the test's, not the overlay's: the watcher's ``RETRAIN_WATCH_SETTLE`` is 0 (the
ConfigMap's 10 s wait for an upload to settle would only add 10 s per overlay here)."""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path

import httpx
import pytest

from events import make_event
from events.codec import encode
from events.payloads import DatasetUpdated, RunParameters
from services.selector.champion import ChampionStore
from services.trainer.cluster import role_from_tf_config
from tests.conftest import wait_for, write_dataset
from tests.emulation.cluster import Cluster
from tests.emulation.kubelet import Node, pod_env
from tests.emulation.overlay import Overlay
from workflows.definition import workflow_name

pytestmark = [pytest.mark.integration, pytest.mark.slow]
OURS = ("retrain-watcher", "retrain-selector", "retrain-ui")
PROBES = ("readinessProbe", "livenessProbe")
ONE_MODEL = {"models": ["cnn"], "workers": 2, "steps_per_epoch": 3, "batch_size": 32}
WATCHER = "retrain-watcher"
NO_SETTLE = {"RETRAIN_WATCH_SETTLE": "0"}  # the test's own (module docstring)
LOCAL = "local"
REQUESTER = "retrain/cli"  # the source of the test's own request
LOCALS = frozenset({"source"})  # the DAG task of every step after the plan


def _argument(container: dict, flag: str) -> str:
    args = container["args"]
    return args[args.index(flag) + 1]


def _put_data(cluster: Cluster, stack: list) -> None:
    """The dataset where the runbook puts it: on the data volume, or in the bucket (MinIO
    emulated by the S3-compatible server the watcher's bucket tests use)."""
    [watcher] = cluster.overlay.deployment_pod("retrain-watcher")["spec"]["containers"]
    if "--s3" not in watcher["args"]:
        data = _argument(watcher, "--data")
        [mount] = [m["mountPath"] for m in watcher["volumeMounts"] if m["name"] == "data"]
        write_dataset(cluster.home / data.removeprefix(mount).strip("/"))
        return
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    stack.append(server.stop)
    endpoint = _argument(watcher, "--s3-endpoint")
    service, port = endpoint.split("//")[1].split(".")[0], int(endpoint.rsplit(":", 1)[1])
    cluster.node.expose(service, port, server.get_host_and_port()[1])
    bucket, _, prefix = _argument(watcher, "--s3").removeprefix("s3://").partition("/")
    keys = cluster.overlay.secret("retrain-minio")
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{server.get_host_and_port()[1]}",
                          aws_access_key_id=keys["accesskey"],
                          aws_secret_access_key=keys["secretkey"], region_name="us-east-1")
    client.create_bucket(Bucket=bucket)  # what the retrain-minio-setup Job does (mc mb)
    local = write_dataset(cluster.node.root / "upload")
    for path in sorted(local.iterdir()):  # the runbook's mc cp
        client.upload_file(str(path), bucket, f"{prefix}/{path.name}")


def _as_started(overlay: Overlay, name: str) -> tuple:
    """Deployment ``name`` as the kubelet starts it: its object and the environment its
    container resolves to (ConfigMaps and Secrets included)."""
    pod = overlay.deployment_pod(name)
    return pod, [pod_env({}, overlay, c, {}) for c in pod["spec"]["containers"]]


@pytest.fixture(scope="module", params=[LOCAL, "local-bucket"])
def cluster(request, tmp_path_factory, redis_handle, standin_trainer, trained_models):
    redis_handle.client.flushdb()
    overlay = Overlay.render(request.param)
    local = overlay if overlay.name == LOCAL else Overlay.render(LOCAL)
    node = Node(tmp_path_factory.mktemp(f"cluster-{request.param}"), redis_handle.url)
    made = Cluster(overlay, node, list(standin_trainer),
                   {"RETRAIN_STANDIN_MODELS": str(trained_models.folder)})
    stack: list = []
    made.started_at = time.monotonic()
    made.redis = redis_handle.client
    try:
        _put_data(made, stack)
        started = {name: made.deployment(name, NO_SETTLE if name == WATCHER else None)
                   for name in OURS if overlay is local  # all at once, as a rollout does
                   or _as_started(overlay, name) != _as_started(local, name)}
        made.probed = {name: {kind: c.probe(kind) for kind in PROBES}
                       for name, c in started.items()}
        yield made
    finally:
        logs = made.stop()
        for stop in stack:
            stop()
        print(f"emulated overlay {request.param}: {time.monotonic() - made.started_at:.1f} s")
        made.logs = logs


def _watchers(cluster: Cluster) -> tuple[dict, dict]:
    """The watcher's dataset event as the EventSource received it, and the Workflow the Sensor
    submitted for it."""
    def arrived() -> list:
        return [e["body"] for e in cluster.events.received if e["body"]["source"] != REQUESTER]
    try:
        wait_for(lambda: arrived() and len(cluster.events.submitted) == len(
            cluster.events.received), seconds=60)
    except AssertionError:  # what arrived and did not pass the Sensor, and what the watcher said
        raise AssertionError((cluster.events.refused, cluster.events.received,
                              cluster.running[WATCHER].log.read_text()[-2000:])) from None
    event = arrived()[0]
    name = workflow_name(event["source"], event["id"])
    [workflow] = [w for w in cluster.events.submitted if w["metadata"]["name"] == name]
    return event, workflow


def _one_model_request(cluster: Cluster) -> dict:
    """The watcher's dataset, for one model on two workers, sent to the webhook EventSource as
    ``retrain publish`` sends it (not waiting for the watcher's own event); the Workflow the
    Sensor submits for it."""
    token = cluster.overlay.value("Secret", "retrain-webhook-token", "token")
    [watcher] = cluster.overlay.deployment_pod(WATCHER)["spec"]["containers"]
    uri = (_argument(watcher, "--data") if "--data" in watcher["args"]
           else _watchers(cluster)[0]["data"]["uri"])  # a mirror's folder: the watcher names it
    event = make_event("dataset.updated", DatasetUpdated(
        uri=uri, parameters=RunParameters(**ONE_MODEL)), source=REQUESTER, id="one-model")
    headers, body = encode(event, "structured")
    port = cluster.node.services[("retrain-webhook-eventsource-svc", 12000)]
    answer = httpx.post(f"http://127.0.0.1:{port}/dataset-updated", content=body,
                        headers={**headers, "Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    name = workflow_name(REQUESTER, "one-model")
    [workflow] = [w for w in cluster.events.submitted if w["metadata"]["name"] == name]
    return workflow


@pytest.fixture(scope="module")
def run(cluster):
    """The overlay's Workflow, run once: in local, a one-model request's, every step; in an
    overlay whose WorkflowTemplate is local's, the watcher's own, its fetch and plan only (what
    reads where the watcher put the data; the rest is local's)."""
    local = Overlay.render(LOCAL)
    if cluster.overlay.name == LOCAL or not _same(cluster.overlay, local, "WorkflowTemplate"):
        made = cluster.submit(_one_model_request(cluster))
    else:
        made = cluster.submit(_watchers(cluster)[1], omit=LOCALS)
    made.phase = made.run()
    return made


def _same(overlay: Overlay, local: Overlay, *kinds: str) -> bool:
    """``overlay`` holds local's objects of ``kinds`` unchanged (and may add others)."""
    return all(d in overlay.all(k) for k in kinds for d in local.all(k))


def test_each_deployment_answers_its_probes_within_the_times_it_declares(cluster):
    missing, late = [], []
    for name, probed in cluster.probed.items():
        for kind, answered in probed.items():
            if answered is None:
                missing.append(f"{name}: no {kind}")
            elif not answered.in_time:
                late.append(f"{name}: {answered}:\n"
                            + cluster.running[name].log.read_text()[-1500:])
    assert not late and not missing, (late, missing)
    assert WATCHER in cluster.probed  # every overlay here has a watcher of its own


def test_the_watchers_event_passes_the_sensor_which_names_and_parameterises_the_workflow(
        cluster, run):  # (after the run: the watcher's first scan meanwhile, not waited for)
    event, workflow = _watchers(cluster)
    assert not cluster.events.refused
    arguments = {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}
    assert arguments["data-uri"] == event["data"]["uri"]
    assert arguments["data-uri"].startswith("/var/lib/retrain/")  # as the pods see the volume
    assert json.loads(arguments["event"])["id"] == event["id"]


def test_the_workflow_runs_every_step_and_the_selector_judges_every_model_it_trained(cluster, run):
    failed = [(n.path, n.phase, n.stderr[-2000:]) for n in run.nodes if n.phase != "Succeeded"]
    assert run.phase == "Succeeded" and not failed, (failed, _replica_logs(cluster))
    assert not cluster.api.refusals, cluster.api.refusals
    steps = [n.template for n in run.nodes]
    # every output a step declares was where Argo reads it (a missing one would be Errored)
    plan = run.step("plan")[0]
    assert plan.inputs["data-uri"] == run.arguments["data-uri"]  # fetch: nothing to fetch
    if run.omit:  # what follows the plan: local's, run there
        assert steps == ["fetch", "plan"] and plan.outputs["trainings"], steps
        return
    for earlier, later in (("fetch", "plan"), ("plan", "check-cache"),
                           ("check-cache", "ingest"), ("ingest", "validate")):
        assert steps.index(earlier) < steps.index(later), steps
    trained = [item["model"] for item in json.loads(plan.outputs["trainings"])]
    assert trained == ONE_MODEL["models"]
    assert steps.count("create-training") == len(trained) == steps.count("wait-training")
    for earlier, later in (("validate", "check-training"), ("check-training", "create-training"),
                           ("create-training", "wait-training"), ("wait-training", "finish")):
        assert steps.index(earlier) < steps.index(later), steps
    scope = str((cluster.home / "models").resolve())
    store = ChampionStore(cluster.redis, scope)
    try:
        wait_for(lambda: len(store.decisions_of(run.name)) >= len(trained), seconds=90)
    except AssertionError:
        raise AssertionError(cluster.running["retrain-selector"].log.read_text()[-3000:]) from None
    decisions = store.decisions_of(run.name)
    assert {d["model_type"] for d in decisions} == set(trained), decisions
    assert store.get() is not None  # the first candidate judged better than none is served


def _ran_in_local(cluster: Cluster, *kinds: str) -> bool:
    """True in an overlay other than local, once it is checked to hold overlay local's objects
    of ``kinds`` unchanged (adding others of its own): what local's run showed of them holds
    here, so they are not started again. An overlay that changes one of them fails here, and
    the test is to run for it too."""
    if cluster.overlay.name == LOCAL:
        return False
    local = Overlay.render(LOCAL)
    changed = [f"{k} {d['metadata']['name']}" for k in kinds for d in local.all(k)
               if d not in cluster.overlay.all(k)]
    assert not changed, f"{cluster.overlay.name} changes {changed}: run them here too"
    return True


def test_two_worker_replicas_read_the_tf_config_the_training_operator_gives(cluster, run):
    """The one-model request's training on two workers: each replica's TF_CONFIG as the
    trainer reads it."""
    if run.omit:  # the trainings are local's, run there
        assert _ran_in_local(cluster, "WorkflowTemplate")
        return
    replicas = [r for r in cluster.operator.replicas if r.name.startswith(
        tuple(n.outputs["job-name"] for n in run.step("create-training")))]
    roles = [role_from_tf_config(r.env.get("TF_CONFIG")) for r in replicas]
    assert [(r.index, r.workers, r.is_chief) for r in roles] == [(0, 2, True), (1, 2, False)]
    [job] = [n.outputs["job-name"] for n in run.step("create-training")]
    assert json.loads(replicas[1].env["TF_CONFIG"])["cluster"]["worker"] == [
        f"{job}-worker-{i}.retrain.svc:2222" for i in range(2)]
    result = json.loads((cluster.home / "runs" / run.name / "cnn" / "result.json").read_text())
    assert result["workers"] == 2


def _replica_logs(cluster: Cluster) -> list[str]:
    return [f"{r.name}: {r.log.read_text()[-1500:]}" for r in cluster.operator.replicas
            if r.process is not None and r.process.returncode]


def _png() -> dict:
    from PIL import Image

    out = io.BytesIO()
    Image.new("L", (28, 28), 128).save(out, format="PNG")
    return {"image_bytes": {"b64": base64.b64encode(out.getvalue()).decode()}}


def test_two_predictor_pods_serve_the_champion_and_the_guard_adds_up_both(cluster):
    """KServe's layout (the claim's models folder at /mnt/models), Knative's environment; each
    pod's probes within their times; the guard's sum over the revision's pods (issue 29 item 5)."""
    from core.kube import api_client
    from services.selector.pods import PodsSource, predictor_selector

    if _ran_in_local(cluster, "ServingRuntime", "InferenceService", "Role", "RoleBinding"):
        return
    champion = ChampionStore(cluster.redis, str((cluster.home / "models").resolve())).get()
    assert champion is not None, "no champion to serve: the selector promoted nothing"

    pods = [cluster.predictor(), cluster.predictor()]
    probed = {p.name: {kind: p.probe(kind) for kind in PROBES} for p in pods}
    for pod in pods:  # (Ready: what the probe says, else what the runbook checks)
        wait_for(lambda pod=pod: _answers(pod, "/v2/health/ready"), seconds=120)
        cluster.list_pod(pod)
    counts = (3, 5)
    for pod, n in zip(pods, counts):
        for _ in range(n):
            answer = httpx.post(f"http://127.0.0.1:{pod.port('8080')}/v1/models/fashion-mnist"
                                ":predict", json={"instances": [_png()]}, timeout=30)
            assert answer.status_code == 200, answer.text
    version = champion.version
    account = cluster.overlay.deployment_pod("retrain-selector")["spec"]["serviceAccountName"]
    source = PodsSource(api_client(cluster.api.url, cluster.node.tokens[account]), "retrain",
                        predictor_selector("fashion-mnist"))
    assert source.scrape().of(version).requests == sum(counts)
    assert not cluster.api.refusals, cluster.api.refusals
    missing = [f"{name}: no {kind}" for name, kinds in probed.items()
               for kind, answer in kinds.items() if answer is None]
    late = [answer for kinds in probed.values() for answer in kinds.values()
            if answer is not None and not answer.in_time]
    assert not missing and not late, (missing, late)  # item 7: without one Knative checks TCP


def _answers(pod, path: str) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{pod.port('8080')}{path}", timeout=2).status_code == 200
    except httpx.HTTPError:
        assert pod.process.poll() is None, Path(pod.log).read_text()[-3000:]
        return False


def test_minios_bucket_notifications_are_taken_by_the_watcher(cluster):
    """MinIO's webhook target (its endpoint and auth token, from the MinIO Deployment's own
    environment) reaches the watcher's /webhooks/s3 and is accepted."""
    from tests.emulation.kubelet import container_env

    names = [d["metadata"]["name"] for d in cluster.overlay.all("Deployment")]
    if "retrain-minio" not in names:  # a watched folder: no bucket, nothing notifies
        [watcher] = cluster.overlay.deployment_pod("retrain-watcher")["spec"]["containers"]
        assert "--s3" not in watcher["args"] and cluster.overlay.name == LOCAL
        return
    [minio] = cluster.overlay.deployment_pod("retrain-minio")["spec"]["containers"]
    env = container_env(cluster.overlay, minio, {})
    endpoint = cluster.node.network(env["MINIO_NOTIFY_WEBHOOK_ENDPOINT_RETRAIN"])
    [watcher] = cluster.overlay.deployment_pod("retrain-watcher")["spec"]["containers"]
    bucket, _, prefix = _argument(watcher, "--s3").removeprefix("s3://").partition("/")
    record = {"eventVersion": "2.0", "eventSource": "minio:s3", "awsRegion": "",
              "eventName": "s3:ObjectCreated:Put", "s3": {
                  "bucket": {"name": bucket}, "object": {
                      "key": f"{prefix}/train-images-idx3-ubyte.gz", "size": 1, "eTag": "x"}}}
    answer = httpx.post(endpoint, json={"EventName": "s3:ObjectCreated:Put",
                                        "Key": f"{bucket}/{prefix}", "Records": [record]},
                        headers={"Authorization": env["MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_RETRAIN"]},
                        timeout=10)
    assert answer.status_code < 300, answer.text
