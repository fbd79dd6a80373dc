"""Argo Events takes Git and S3 itself, run here first (issue 29): a GitHub push and a MinIO
bucket notification, each as its EventSource dispatches it, through the shipped Sensor (its
data filters and ``dataTemplate``s evaluated as in ``tests/manifests/test_event_sources.py``)
into the Workflow it submits, whose ``fetch``, ``plan``, ``supersede``, ``check-cache`` and
``ingest`` steps run as the emulation runs every step (``tests/emulation``): the overlay's own
containers, from their rendered command, arguments and environment. What follows ingestion
(validation, the trainings) is the same WorkflowTemplate's, run in ``test_overlays.py``; here
it is omitted.

The GitHub push comes from a real local bare repository (a ``file://`` URL) and runs in
overlay ``production-github``; the notification's objects are in the S3-compatible test
server (moto, as the watcher's bucket tests use) standing in for the MinIO of the overlay that
holds the ``minio`` EventSource. What the test sets that the overlay does not, and why:

- production ships no Secrets (the runbook creates them): the ones its steps read are overlay
  ``local``'s;
- the watched repository is the test's: the GitHub Sensor's ``clone_url`` filter and
  ``RETRAIN_FETCH_REPOSITORIES`` (the fetch step's allowlist) name the local repository's URL
  instead of GitHub's;
- ``RETRAIN_WATCH_SETTLE`` is 0 (the fetch step would wait the ConfigMap's 10 s for the
  bucket's listing to settle)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from tests.emulation.cluster import Cluster
from tests.emulation.events import set_at
from tests.emulation.kubelet import Node
from tests.emulation.overlay import ROOT, Overlay
from tests.manifests.test_event_sources import (
    admits,
    github_push,
    minio_event,
    render,
    s3_record,
)
from tests.services.ingest_watcher.test_s3 import s3_endpoint  # noqa: F401 (fixture)
from workflows.definition import workflow_name

pytestmark = [pytest.mark.integration, pytest.mark.slow]
STEPS = ("fetch", "plan", "supersede", "check-cache", "ingest")
AFTER_INGEST = frozenset({"validate", "train"})  # the DAG's tasks after ingest: local's
NO_SETTLE = {"RETRAIN_WATCH_SETTLE": "0"}
HOME = "/var/lib/retrain"  # the data volume, as every pod mounts it


def changed(overlay: Overlay, kind: str, name: str, change) -> Overlay:
    """``overlay`` with object ``kind``/``name`` as ``change`` (given a copy) makes it."""
    doc = overlay.get(kind, name)
    made = copy.deepcopy(doc)
    change(made)
    return Overlay(overlay.name, tuple(made if d is doc else d for d in overlay.docs))


def with_config(overlay: Overlay, values: dict[str, str]) -> Overlay:
    return changed(overlay, "ConfigMap", "retrain-config", lambda d: d["data"].update(values))


def with_secrets_of(overlay: Overlay, other: Overlay) -> Overlay:
    """``overlay`` with every Secret it lacks that ``other`` has (what the runbook creates)."""
    have = {d["metadata"]["name"] for d in overlay.all("Secret")}
    return Overlay(overlay.name, overlay.docs + tuple(
        d for d in other.all("Secret") if d["metadata"]["name"] not in have))


def sensor_of(overlay: Overlay, source_kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the EventSource of ``source_kind``, the Sensor listening to it): found by kind."""
    [source] = [d for d in overlay.all("EventSource") if source_kind in d["spec"]]
    [sensor] = [d for d in overlay.all("Sensor") if any(
        dep["eventSourceName"] == source["metadata"]["name"]
        for dep in d["spec"]["dependencies"])]
    return source, sensor


def overlay_with(source_kind: str, preferred: str) -> Overlay:
    """``preferred`` when it exists, else the first overlay holding a ``source_kind``
    EventSource."""
    folders = sorted((ROOT / "manifests" / "overlays").iterdir(),
                     key=lambda p: (p.name != preferred, p.name))
    for folder in folders:
        overlay = Overlay.render(folder.name)
        if any(source_kind in d["spec"] for d in overlay.all("EventSource")):
            return overlay
    raise AssertionError(f"no overlay holds a {source_kind} EventSource")


def submitted(sensor: dict[str, Any], data: dict[str, Any]) -> dict[str, Any] | None:
    """What the Sensor submits for an event of ``data`` (None: its filters refuse it)."""
    [dependency] = sensor["spec"]["dependencies"]
    if not admits(dependency, data):
        return None
    [trigger] = sensor["spec"]["triggers"]
    argo = trigger["template"]["argoWorkflow"]
    workflow = copy.deepcopy(argo["source"]["resource"])
    for parameter in argo["parameters"]:
        set_at(workflow, parameter["dest"], render(parameter["src"]["dataTemplate"], data))
    return workflow


def cluster_of(overlay: Overlay, root: Path, redis_handle) -> Cluster:
    redis_handle.client.flushdb()
    return Cluster(overlay, Node(root, redis_handle.url), ["false"], {})


def run_to_validation(cluster: Cluster, workflow: dict[str, Any]) -> dict[str, str]:
    """The Workflow's steps up to ingestion, each succeeded in order; the fetch step's
    outputs (what the plan step was given)."""
    try:
        run = cluster.submit(workflow, omit=AFTER_INGEST)
        phase = run.run()
    finally:
        cluster.stop()
    failed = [(n.path, n.phase, n.stderr[-2000:]) for n in run.nodes if n.phase != "Succeeded"]
    assert phase == "Succeeded" and not failed, failed
    assert [n.template for n in run.nodes] == list(STEPS), [n.template for n in run.nodes]
    fetched = run.step("fetch")[0].outputs
    assert run.step("plan")[0].inputs["data-uri"] == fetched["data-uri"]
    assert run.step("check-cache")[0].outputs["hit"] == "false"  # a new revision: ingested
    return fetched


def test_a_github_push_is_fetched_planned_and_ingested_by_the_workflow_its_sensor_submits(
        tmp_path, redis_handle):
    from tests.conftest import write_dataset
    from tests.services.ingest_watcher.test_git import Upstream

    (tmp_path / "github").mkdir()
    upstream = Upstream(tmp_path / "github")
    write_dataset(upstream.work / "datasets" / "fashion-mnist", train=30, test=10)
    pushed = upstream.push("the dataset")
    url = upstream.bare.as_uri()
    push = github_push(after=pushed["after"], changed=pushed["commits"][0]["added"],
                       repository=url)
    shipped = Overlay.render("production-github")
    _, sensor = sensor_of(shipped, "github")
    assert submitted(sensor, push) is None  # not the watched repository, as shipped

    def watch_this_repository(doc: dict[str, Any]) -> None:
        [dependency] = doc["spec"]["dependencies"]
        [clone_url] = [f for f in dependency["filters"]["data"]
                       if f["path"] == "body.repository.clone_url"]
        clone_url["value"] = [f"^{url}$"]

    overlay = changed(with_config(with_secrets_of(shipped, Overlay.render("local")),
                                  {"RETRAIN_FETCH_REPOSITORIES": url}),
                      "Sensor", sensor["metadata"]["name"], watch_this_repository)
    workflow = submitted(sensor_of(overlay, "github")[1], push)
    assert workflow is not None
    delivery = push["headers"]["X-Github-Delivery"][0]
    assert workflow["metadata"]["name"] == workflow_name("retrain/fetch/github", delivery)

    cluster = cluster_of(overlay, tmp_path / "cluster", redis_handle)
    fetched = run_to_validation(cluster, workflow)
    folder = fetched["data-uri"]
    assert folder.startswith(f"{HOME}/git/") and folder.endswith(
        f"/{pushed['after']}/datasets/fashion-mnist")
    here = cluster.home / folder.removeprefix(HOME + "/")
    assert sorted(p.name for p in here.iterdir()) == sorted(
        Path(p).name for p in pushed["commits"][0]["added"])
    event = json.loads(fetched["event"])
    assert (event["source"], event["id"]) == ("retrain/fetch/github", delivery)
    assert event["data"]["uri"] == folder


def test_a_minio_notification_is_fetched_planned_and_ingested_by_the_workflow_its_sensor_submits(
        tmp_path, redis_handle, s3_endpoint):  # noqa: F811
    import boto3

    from tests.conftest import write_dataset

    shipped = overlay_with("minio", "local-bucket-events")
    source, sensor = sensor_of(shipped, "minio")
    [(_, watched)] = source["spec"]["minio"].items()
    bucket, prefix = watched["bucket"]["name"], watched["filter"]["prefix"]
    keys = shipped.secret(watched["accessKey"]["name"])
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                          aws_access_key_id=keys[watched["accessKey"]["key"]],
                          aws_secret_access_key=keys[watched["secretKey"]["key"]])
    client.create_bucket(Bucket=bucket)
    local = write_dataset(tmp_path / "upload", train=30, test=10)
    records = []
    for path in sorted(local.iterdir()):  # each upload's notification record, as MinIO sends it
        client.upload_file(str(path), bucket, prefix + path.name)
        records.append(s3_record(prefix + path.name, bucket))
    workflow = submitted(sensor, minio_event(*records))
    assert workflow is not None
    request = records[0]["responseElements"]["x-amz-request-id"]
    assert workflow["metadata"]["name"] == workflow_name("retrain/fetch/minio", request)

    cluster = cluster_of(with_config(shipped, NO_SETTLE), tmp_path / "cluster", redis_handle)
    service, port = watched["endpoint"].split(".", 1)[0], int(watched["endpoint"].rsplit(":")[1])
    cluster.node.expose(service, port, int(s3_endpoint.rsplit(":", 1)[1]))  # MinIO, here
    fetched = run_to_validation(cluster, workflow)
    folder = fetched["data-uri"]
    assert folder.startswith(f"{HOME}/s3/") and folder.endswith("/data")
    here = cluster.home / folder.removeprefix(HOME + "/")
    assert sorted(p.name for p in here.iterdir()) == sorted(p.name for p in local.iterdir())
    event = json.loads(fetched["event"])
    assert (event["source"], event["data"]["uri"]) == ("retrain/fetch/minio", folder)
