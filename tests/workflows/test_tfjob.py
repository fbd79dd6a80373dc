"""Waiting on a TFJob's own conditions, through the real kubernetes client, against a stand-in
API server on loopback (no API server can run here) that checks every request: the path, the
verb, the bearer token, and a delete's propagation policy."""

import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from core.http import BackgroundServer, bind
from core.kube import KubeError, api_client
from workflows.tfjob import TrainingJobError, job_state, wait_for_training

pytestmark = [pytest.mark.integration]
TOKEN = "tfjob-stand-in-token"
NAME = "retrain-abc-train-x7k2p"
PATH = f"/apis/kubeflow.org/v1/namespaces/retrain/tfjobs/{NAME}"


def _condition(kind, status="True", message=""):
    return {"type": kind, "status": status, "reason": f"TFJob{kind}", "message": message,
            "lastTransitionTime": "2026-11-23T10:00:00Z"}


CREATED = [_condition("Created", message="TFJob is created.")]
RUNNING = [*CREATED, _condition("Running", message="TFJob is running.")]
RESTARTING = [*CREATED, _condition("Running", "False"),
              _condition("Restarting", message="worker-1 exited with code 137; restarting")]
SUCCEEDED = [*CREATED, _condition("Running", "False"),
             _condition("Succeeded", message="TFJob retrain-abc successfully completed.")]
FAILED = [*CREATED, _condition("Running", "False"),
          _condition("Failed", message="TFJob has failed because it has reached the specified "
                                       "backoff limit")]


class TFJobStandIn:
    """Answers GETs of one TFJob with the next of ``statuses`` (the last one repeats)."""

    def __init__(self, statuses):
        self.statuses = list(statuses)
        self.requests = []
        self.violations = []
        self.deleted = False
        self._lock = threading.Lock()
        app = FastAPI()

        @app.api_route("/{path:path}", methods=["GET", "DELETE", "PATCH", "PUT", "POST"])
        async def handle(path: str, request: Request):
            path = "/" + path
            body = await request.body()
            with self._lock:
                self.requests.append((request.method, path, json.loads(body) if body else None))
                if request.headers.get("authorization") != f"Bearer {TOKEN}":
                    return self._refuse(401, f"{request.method} {path} without the bearer token")
                if path != PATH:
                    return self._refuse(404, f"tfjobs.kubeflow.org {path} not found")
                if request.method == "DELETE":
                    policy = (request.query_params.get("propagationPolicy")  # either way
                              or json.loads(body or "{}").get("propagationPolicy"))
                    if policy != "Background":
                        return self._refuse(422, "delete without propagationPolicy Background")
                    self.deleted = True
                    return JSONResponse({"kind": "Status", "status": "Success"})
                if request.method != "GET":
                    return self._refuse(405, f"the wait must not {request.method} a TFJob")
                conditions = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
                if isinstance(conditions, int):  # the API server answers an error instead
                    return JSONResponse({"kind": "Status", "status": "Failure", "code": conditions,
                                         "message": f"answered {conditions}"}, status_code=conditions)
                return JSONResponse({"apiVersion": "kubeflow.org/v1", "kind": "TFJob",
                                     "metadata": {"name": NAME, "namespace": "retrain"},
                                     "status": {"conditions": conditions}})

        self.server = BackgroundServer(app, bind("127.0.0.1", 0, "tfjob stand-in"), "kube-api")

    def _refuse(self, status, message):
        self.violations.append(message)
        return JSONResponse({"kind": "Status", "status": "Failure", "message": message,
                             "code": status}, status_code=status)

    def __enter__(self):
        self.server.start()
        return self

    def __exit__(self, *exc):
        self.server.stop()


def _wait(standin, timeout=60.0, token=TOKEN):
    ticks = iter(range(10_000))
    return wait_for_training(api_client(standin.server.url, token), "retrain", NAME, timeout,
                             poll=1.0, sleep=lambda _s: None, clock=lambda: next(ticks))


def test_state_comes_from_the_conditions_alone():
    assert job_state({}).phase == "running"
    assert job_state({"status": {"conditions": RESTARTING}}).phase == "running"
    assert job_state({"status": {"conditions": SUCCEEDED}}).phase == "succeeded"
    assert job_state({"status": {"conditions": [*SUCCEEDED, *FAILED[-1:]]}}).phase == "failed"
    # replica counts say nothing: a worker restarted under OnFailure never counts as failed
    assert job_state({"status": {"replicaStatuses": {"Worker": {"failed": 0}},
                                 "conditions": FAILED}}).phase == "failed"


def test_a_job_that_succeeds_ends_the_wait():
    with TFJobStandIn([CREATED, RUNNING, RUNNING, SUCCEEDED]) as api:
        assert _wait(api) == "TFJob retrain-abc successfully completed."
    assert api.violations == [] and not api.deleted
    assert [verb for verb, _, _ in api.requests] == ["GET"] * 4


def test_a_job_failed_by_its_backoff_limit_fails_the_wait_with_its_reason():
    with TFJobStandIn([CREATED, RUNNING, RESTARTING, RESTARTING, FAILED]) as api:
        with pytest.raises(TrainingJobError, match="reached the specified backoff limit"):
            _wait(api)
    assert api.violations == [] and not api.deleted


def test_a_job_restarting_forever_is_deleted_at_the_deadline():
    with TFJobStandIn([CREATED, RESTARTING]) as api:
        with pytest.raises(TrainingJobError, match="still running after 5s .*deleted it"):
            _wait(api, timeout=5)
    assert api.violations == [] and api.deleted
    assert api.requests[-1][:2] == ("DELETE", PATH)


def test_an_api_server_briefly_away_does_not_end_a_long_wait():
    with TFJobStandIn([RUNNING, 503, 503, 429, RUNNING, SUCCEEDED]) as api:
        assert _wait(api) == "TFJob retrain-abc successfully completed."
    assert api.violations == [] and not api.deleted


def test_a_job_that_is_gone_ends_the_wait_at_once():
    with TFJobStandIn([RUNNING, 404]) as api:
        with pytest.raises(KubeError, match=f"answered 404 to GET {PATH}"):
            _wait(api)
    assert len(api.requests) == 2


def test_api_refusals_name_the_call_and_the_servers_message():
    with TFJobStandIn([RUNNING]) as api:
        with pytest.raises(KubeError, match=f"answered 401 to GET {PATH}: .*without the bearer"):
            _wait(api, token="wrong")


def test_the_step_command_exits_by_the_jobs_outcome(tmp_path):
    env = {**os.environ, "RETRAIN_HOME": str(tmp_path), "RETRAIN_KUBE_TOKEN": TOKEN}
    for statuses, code, text in ((SUCCEEDED, 0, "successfully completed"),
                                 (FAILED, 1, "backoff limit")):
        with TFJobStandIn([RUNNING, statuses]) as api:
            done = subprocess.run(
                [sys.executable, "-m", "retrain.cli", "step", "wait-training", "--name", NAME,
                 "--poll", "0.05"], env={**env, "RETRAIN_KUBE_API_URL": api.server.url},
                capture_output=True, text=True, timeout=120)
        assert done.returncode == code, done.stdout + done.stderr
        assert text in done.stdout + done.stderr
        assert "Traceback" not in done.stderr
        assert api.violations == []


def test_a_failed_job_is_told_to_the_selectors_stream_with_the_runs_round_size(tmp_path, r,
                                                                              redis_handle):
    """Workers OOM-killed past the backoff limit never send training.failed themselves: the
    wait step does, so the selector's round for the run can close on all trainings ended."""
    from events.sinks import read_stream

    env = {**os.environ, "RETRAIN_HOME": str(tmp_path), "RETRAIN_KUBE_TOKEN": TOKEN,
           "RETRAIN_REDIS_URL": redis_handle.url}
    tell = ["--run-id", "retrain-abc", "--model", "batch_norm", "--round-size", "3",
            "--sink", "stream"]
    for statuses, code in ((SUCCEEDED, 0), (FAILED, 1)):
        with TFJobStandIn([RUNNING, statuses]) as api:
            done = subprocess.run(
                [sys.executable, "-m", "retrain.cli", "step", "wait-training", "--name", NAME,
                 "--poll", "0.05", *tell], env={**env, "RETRAIN_KUBE_API_URL": api.server.url},
                capture_output=True, text=True, timeout=120)
        assert done.returncode == code, done.stdout + done.stderr
        assert api.violations == []
    [event] = read_stream(r)  # the job that succeeded sent nothing: its trainer did
    assert event["type"] == "dev.retrain.training.failed"
    assert event["id"] == "retrain-abc/batch_norm/failed"  # the trainer's own id: one decision
    assert event["data"]["round_size"] == 3 and event["data"]["model_type"] == "batch_norm"
    assert "reached the specified backoff limit" in event["data"]["reason"]


def test_a_failed_job_is_told_even_when_redis_is_restarting_at_that_moment(tmp_path):
    """Hours into the wait, Redis may be away just when the job fails: the wait step waits
    for it instead of losing the training.failed."""
    import redis

    from events.sinks import read_stream
    from tests.conftest import free_port, wait_for
    from tests.reliability.test_redis_outage import redis_server

    port = free_port()
    env = {**os.environ, "RETRAIN_HOME": str(tmp_path), "RETRAIN_KUBE_TOKEN": TOKEN,
           "RETRAIN_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    log = tmp_path / "step.err"
    with TFJobStandIn([RUNNING, FAILED]) as api, log.open("w") as errors:
        step = subprocess.Popen(
            [sys.executable, "-m", "retrain.cli", "step", "wait-training", "--name", NAME,
             "--poll", "0.05", "--run-id", "retrain-r", "--model", "cnn", "--round-size", "2",
             "--sink", "stream"], env={**env, "RETRAIN_KUBE_API_URL": api.server.url},
            stdout=subprocess.DEVNULL, stderr=errors, text=True)
        wait_for(lambda: len(api.requests) >= 2, 60)  # the job has failed; Redis is not there
        # past redis-py's own retries of the command (about 7 s), the step waits on
        wait_for(lambda: log.read_text().count("retrying in") >= 1, 60, every=0.1)
        assert step.poll() is None, log.read_text()[-2000:]
        server = redis_server(port, tmp_path)
        try:
            step.wait(timeout=120)
            client = redis.Redis(port=port)
            wait_for(lambda: client.xlen("retrain:events") == 1, 10)
            [event] = read_stream(client)
        finally:
            server.terminate()
            server.wait()
    err = log.read_text()
    assert step.returncode == 1 and "backoff limit" in err
    assert event["id"] == "retrain-r/cnn/failed" and event["data"]["round_size"] == 2


@pytest.mark.slow
def test_the_cluster_trains_a_key_once_and_a_hit_creates_no_job(tmp_path, r, redis_handle,
                                                                 ingested, standin_trainer):
    """check-training before each TFJob: a miss holds the key (a second workflow waits), the
    wait step records the TFJob's model when the job succeeds (or lets the key go when it
    fails), and later checks hit: model.trained ("cached") goes to the selector's stream."""
    from events.sinks import read_stream
    from services.trainer.training_cache import PREFIX, training_cache

    trainer_env = {**os.environ, "RETRAIN_HOME": str(tmp_path), "RETRAIN_KUBE_TOKEN": TOKEN,
                   "RETRAIN_REDIS_URL": redis_handle.url}
    # the check (256Mi) and wait (128Mi) steps would be OOM-killed by TensorFlow: here it
    # cannot even be imported by them
    blocked = tmp_path / "no-tensorflow" / "tensorflow"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('no TensorFlow in this step')\n")
    env = {**trainer_env, "PYTHONPATH": os.pathsep.join(
        [str(blocked.parent), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "runs" / "{run}" / "cnn" / "model"

    def check(run, wait=True):
        args = [sys.executable, "-m", "retrain.cli", "step", "check-training", "--model", "cnn",
                "--dataset-uri", ingested, "--out", str(out).format(run=run), "--warm-start", "",
                "--steps-per-epoch", "3", "--batch-size", "32", "--force", "false",
                "--run-id", run, "--round-size", "1", "--sink", "stream",
                "--outputs", str(tmp_path / "outputs" / run)]
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        if not wait:
            return proc
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stdout + stderr
        return json.loads(stdout.strip().splitlines()[-1])

    def wait_step(run, statuses):
        with TFJobStandIn([RUNNING, statuses]) as api:
            done = subprocess.run(
                [sys.executable, "-m", "retrain.cli", "step", "wait-training", "--name", NAME,
                 "--poll", "0.05", "--run-id", run, "--model", "cnn", "--round-size", "1",
                 "--sink", "stream",
                 "--claim", str(tmp_path / "runs" / run / "cnn" / "claim.json")],
                env={**env, "RETRAIN_KUBE_API_URL": api.server.url}, capture_output=True,
                text=True, timeout=120)
        assert api.violations == []
        return done

    assert check("wf-0")["hit"] == "false"
    assert list(r.scan_iter(PREFIX + "lock:*"))  # held for the TFJob
    failed = wait_step("wf-0", FAILED)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert not list(r.scan_iter(PREFIX + "lock:*"))  # a failed job lets the key go
    [told] = read_stream(r)  # and is told to the selector, TensorFlow or not
    assert told["type"] == "dev.retrain.training.failed" and told["data"]["run_id"] == "wf-0"
    assert training_cache(r, 60).entries() == []

    assert check("wf-1")["hit"] == "false"
    second = check("wf-2", wait=False)  # the same key while wf-1's TFJob trains: it waits
    time.sleep(3)
    assert second.poll() is None
    trained = subprocess.run(  # what wf-1's TFJob runs (the test trainer: the same files)
        [*standin_trainer, "train", "--model", "cnn", "--dataset", ingested,
         "--out", str(out).format(run="wf-1"), "--run-id", "wf-1", "--steps-per-epoch", "3",
         "--batch-size", "32"], env=trainer_env, capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr
    done = wait_step("wf-1", SUCCEEDED)
    assert done.returncode == 0, done.stdout + done.stderr
    [entry] = training_cache(r, 60).entries()
    assert entry.run_id == "wf-1" and entry.model_uri == str(out).format(run="wf-1")
    stdout, _ = second.communicate(timeout=60)
    waited = json.loads(stdout.strip().splitlines()[-1])
    assert waited["hit"] == "true" and waited["reason"].startswith("hit: trained by a concurrent")
    later = check("wf-3")
    assert later["hit"] == "true" and later["reason"].startswith("hit: cnn trained on digest")
    assert later["model-uri"] == entry.model_uri
    events = [e for e in read_stream(r) if e["type"] == "dev.retrain.model.trained"]
    assert [(e["data"]["run_id"], e["data"]["cached"], e["data"]["model_uri"]) for e in events] == [
        ("wf-2", True, entry.model_uri), ("wf-3", True, entry.model_uri)]
    assert events[0]["data"]["round_size"] == 1 and events[0]["id"] == "wf-2/cnn/trained"


# creating a training's TFJob ---------------------------------------------------------------------
JOBS = "/apis/kubeflow.org/v1/namespaces/retrain/tfjobs"


class TFJobsStandIn:
    """The TFJobs of one namespace: created by POST (409 when the name is taken), read and
    deleted by name (404 when there is none); ``errors``: statuses answered first, in order."""

    def __init__(self, jobs=(), errors=()):
        self.jobs = {j["metadata"]["name"]: j for j in jobs}
        self.errors = list(errors)
        self.requests = []
        app = FastAPI()

        @app.api_route("/{path:path}", methods=["GET", "DELETE", "POST"])
        async def handle(path: str, request: Request):
            path, body = "/" + path, await request.body()
            self.requests.append((request.method, path))
            if request.headers.get("authorization") != f"Bearer {TOKEN}":
                return _status(401, "no bearer token")
            if self.errors:
                return _status(self.errors.pop(0), "answered as the test asks")
            if request.method == "POST" and path == JOBS:
                job = json.loads(body)
                name = job["metadata"]["name"]
                if name in self.jobs:
                    return _status(409, f'tfjobs.kubeflow.org "{name}" already exists')
                self.jobs[name] = job
                return JSONResponse(job, status_code=201)
            name = path.removeprefix(JOBS + "/")
            if path.startswith(JOBS + "/") and name in self.jobs:
                return JSONResponse(self.jobs.pop(name) if request.method == "DELETE"
                                    else self.jobs[name])
            return _status(404, f'tfjobs.kubeflow.org "{name}" not found')

        self.server = BackgroundServer(app, bind("127.0.0.1", 0, "tfjobs stand-in"), "kube-api")

    def __enter__(self):
        self.server.start()
        return self

    def __exit__(self, *exc):
        self.server.stop()


def _status(code, message):
    return JSONResponse({"kind": "Status", "status": "Failure", "code": code,
                         "message": message}, status_code=code)


def _job(workers=2):
    return {"apiVersion": "kubeflow.org/v1", "kind": "TFJob",
            "metadata": {"namespace": "retrain", "generateName": "x-",
                         "labels": {"app.kubernetes.io/part-of": "retrain"}},
            "spec": {"runPolicy": {"backoffLimit": 3},
                     "tfReplicaSpecs": {"Worker": {"replicas": workers}}}}


def test_a_tfjob_is_named_for_its_training_and_owned_by_its_workflow():
    from workflows.tfjob import owned_job, tfjob_name

    name = tfjob_name("retrain-0a1b2c3d4e5f60718293", "uid-1", "batch_norm")
    assert name == tfjob_name("retrain-0a1b2c3d4e5f60718293", "uid-1", "batch_norm")
    assert name.startswith("retrain-0a1b2c3d4e5f60718293-batch-norm-")
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 50
    assert name != tfjob_name("retrain-0a1b2c3d4e5f60718293", "uid-2", "batch_norm")
    assert name != tfjob_name("retrain-0a1b2c3d4e5f60718293", "uid-1", "cnn")
    long = tfjob_name("a-workflow-submitted-by-hand-with-a-very-long-name-x7k2p", "u", "cnn")
    assert len(long) <= 50 and long != tfjob_name("a-workflow-submitted-by-hand-with-a-very-long"
                                                  "-name-q9z4r", "v", "cnn")
    given = _job(workers=4)
    job = owned_job(given, "retrain-abc", "uid-1", "cnn")
    assert given == _job(workers=4)  # not changed in place
    assert "generateName" not in job["metadata"]
    assert job["metadata"]["ownerReferences"] == [{
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "name": "retrain-abc",
        "uid": "uid-1"}]
    assert job["metadata"]["labels"]["retrain.dev/workflow-uid"] == "uid-1"
    # one lost worker restarts all four: each may restart three times
    assert job["spec"]["runPolicy"]["backoffLimit"] == 12


def _create(api, job, **kwargs):
    from workflows.tfjob import create_training

    return create_training(api_client(api.server.url, TOKEN), job, sleep=lambda _s: None,
                           **kwargs)


def test_a_create_tried_again_adopts_the_job_its_first_try_made():
    from workflows.tfjob import owned_job

    job = owned_job(_job(), "retrain-abc", "uid-1", "cnn")
    with TFJobsStandIn() as api:
        assert _create(api, job) == job["metadata"]["name"]
        assert _create(api, job) == job["metadata"]["name"]  # 409: ours, adopted
    assert list(api.jobs) == [job["metadata"]["name"]]
    assert [m for m, _ in api.requests] == ["POST", "POST", "GET"]


def test_a_job_of_that_name_that_is_not_this_trainings_is_not_adopted():
    from workflows.tfjob import owned_job

    theirs = owned_job(_job(), "retrain-abc", "uid-1", "cnn")
    theirs["metadata"]["labels"]["retrain.dev/workflow-uid"] = "uid-of-another"
    with TFJobsStandIn([theirs]) as api:
        with pytest.raises(KubeError, match="exists and is not this training's"):
            _create(api, owned_job(_job(), "retrain-abc", "uid-1", "cnn"))


def test_an_api_server_away_is_tried_again_and_a_refusal_is_not():
    from workflows.tfjob import owned_job

    job = owned_job(_job(), "retrain-abc", "uid-1", "cnn")
    with TFJobsStandIn(errors=[503, 429]) as api:
        assert _create(api, job) == job["metadata"]["name"]
    with TFJobsStandIn(errors=[503, 503]) as api:
        with pytest.raises(KubeError, match="answered 503"):
            _create(api, job, attempts=2)
    with TFJobsStandIn(errors=[403]) as api:
        with pytest.raises(KubeError, match="answered 403 to POST"):
            _create(api, job)
    assert len(api.requests) == 1


def _step(args, env):
    return subprocess.run([sys.executable, "-m", "retrain.cli", "step", *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_create_step_outputs_its_job_and_reports_a_refusal_as_the_trainings_end(
        tmp_path, r, redis_handle):
    import yaml

    from events.sinks import read_stream
    from workflows import record
    from workflows.definition import ClusterNames, tfjob_manifest

    manifest = re.sub(r"\{\{([^}]+)\}\}", lambda m: "2" if "workers" in m[1] else "x",
                      tfjob_manifest(ClusterNames()))
    env = {**os.environ, "RETRAIN_HOME": str(tmp_path), "RETRAIN_KUBE_TOKEN": TOKEN,
           "RETRAIN_REDIS_URL": redis_handle.url}
    args = ["create-training", "--manifest", manifest, "--workflow-uid", "uid-1",
            "--run-id", "retrain-abc", "--model", "batch_norm", "--round-size", "3",
            "--sink", "stream", "--outputs", str(tmp_path / "outputs")]
    with TFJobsStandIn() as api:
        done = _step(args, {**env, "RETRAIN_KUBE_API_URL": api.server.url})
        again = _step(args, {**env, "RETRAIN_KUBE_API_URL": api.server.url})
    assert done.returncode == 0 and again.returncode == 0, done.stderr + again.stderr
    [(name, job)] = api.jobs.items()
    assert (tmp_path / "outputs" / "job-name").read_text() == name
    assert job["spec"]["runPolicy"]["backoffLimit"] == 6
    assert job == {**yaml.safe_load(manifest) | {"metadata": job["metadata"]},
                   "spec": job["spec"]}
    assert read_stream(r) == []
    with TFJobsStandIn(errors=[403]) as api:
        refused = _step(args, {**env, "RETRAIN_KUBE_API_URL": api.server.url})
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "could not be created: Kubernetes API answered 403 to POST" in refused.stdout + refused.stderr
    [event] = read_stream(r)
    assert event["type"] == "dev.retrain.training.failed"
    assert event["id"] == "retrain-abc/batch_norm/failed" and event["data"]["round_size"] == 3
    kept = record.get(r, "retrain-abc")
    assert kept["models"]["batch_norm"]["status"] == "failed"
    assert "403" in kept["models"]["batch_norm"]["reason"]


@pytest.mark.parametrize("code", [403, 404])
def test_a_wait_the_api_refuses_is_the_trainings_end_told_to_the_selector(tmp_path, r,
                                                                         redis_handle, code):
    from events.sinks import read_stream

    env = {**os.environ, "RETRAIN_HOME": str(tmp_path), "RETRAIN_KUBE_TOKEN": TOKEN,
           "RETRAIN_REDIS_URL": redis_handle.url}
    with TFJobStandIn([RUNNING, code]) as api:
        done = _step(["wait-training", "--name", NAME, "--poll", "0.05", "--run-id", "retrain-w",
                      "--model", "cnn", "--round-size", "2", "--sink", "stream"],
                     {**env, "RETRAIN_KUBE_API_URL": api.server.url})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"cannot follow TFJob {NAME}: Kubernetes API answered {code}" in done.stdout + done.stderr
    [event] = read_stream(r)
    assert event["id"] == "retrain-w/cnn/failed" and event["data"]["round_size"] == 2
