"""Argo Events takes Git and S3 itself: the GitHub, GitLab, MinIO and SQS EventSources and
their Sensors, valid against the released schemas, their filters run on the pushes and
notifications those services send (admitting only the watched branch's pushes that touch the
dataset folder, or objects under the watched prefix), and their trigger's templates rendered
on them into the fetch spec that ``retrain step fetch`` takes and the Workflow name the
fetched event's source and id give. No Argo Events runs here: what a Sensor does with an
event is emulated narrowly below (the event's data as an EventSource dispatches it, Go's
``json.Marshal``: compact, keys sorted; a data filter's gjson path read as gjson gives it, a
string's text or anything else's raw JSON, matched with a regular expression as Go's RE2
matches these simple ones; a ``dataTemplate`` as Go's text/template renders it with the few
sprig functions our Sensors use). A filter or template using anything else fails here."""

import hashlib
import json
import re
from pathlib import Path

import pytest

from tests.manifests.kustomize import build
from tests.manifests.schemas import problems
from tests.services.ingest_watcher.test_s3 import s3, s3_endpoint  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[2]


# -- the emulation ----------------------------------------------------------------------------

def go_json(value):
    """``json.Marshal``'s text: compact, map keys sorted, <, > and & escaped."""
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def gjson(data, path):
    """(exists, the result's String()) of a gjson path of keys, indices and ``#`` (every
    element of an array)."""
    found, value = _walk(data, path.split("."))
    if not found:
        return False, ""
    return True, value if isinstance(value, str) else go_json(value)


def _walk(value, parts):
    if not parts:
        return True, value
    head, rest = parts[0], parts[1:]
    if head == "#":
        if not isinstance(value, list):
            return False, None
        results = [_walk(item, rest) for item in value]
        return True, [v for ok, v in results if ok]
    if isinstance(value, dict) and head in value:
        return _walk(value[head], rest)
    if isinstance(value, list) and head.isdigit() and int(head) < len(value):
        return _walk(value[int(head)], rest)
    return False, None


def admits(dependency, data):
    """Whether the dependency's data filters (all of them: ``and``) admit the event's data."""
    filters = dependency.get("filters", {})
    assert filters.get("dataLogicalOperator", "and") == "and"
    assert set(filters) <= {"data", "dataLogicalOperator"}, "only data filters are emulated"
    parsed = json.loads(go_json(data))
    for data_filter in filters.get("data", []):
        assert data_filter["type"] == "string" and "template" not in data_filter
        exists, text = gjson(parsed, data_filter["path"])
        if not exists:
            return False  # Argo Events: "path does not exist", the event is not admitted
        matched = any(re.search(pattern, text) for pattern in data_filter["value"])
        if matched != (data_filter.get("comparator", "=") in ("=", "")):
            return False
    return True


def render(template, data):
    """A ``dataTemplate`` rendered with ``.Input`` the event's data."""
    out, position = [], 0
    for action in re.finditer(r"\{\{-?\s*(.*?)\s*-?\}\}", template, re.DOTALL):
        out.append(template[position:action.start()])
        out.append(_text(_pipeline(_tokens(action[1]), {"Input": data})))
        position = action.end()
    return "".join(out) + template[position:]


def _text(value):
    if value is None:
        return "<no value>"
    return value if isinstance(value, str) else str(value)


# a string, "(", ")" (with the fields read off what the parentheses give: ").a.b"), "|", a word
TOKEN = re.compile(r'\s*("(?:[^"\\]|\\.)*"|\(|\)(?:\.\w+)*|\||[^\s()|]+)')


def _tokens(text):
    tokens, position = [], 0
    while position < len(text.rstrip()):
        match = TOKEN.match(text, position)
        assert match, f"cannot read {text[position:]!r}"
        tokens.append(match[1])
        position = match.end()
    return tokens


def _pipeline(tokens, dot):
    """Commands separated by ``|``, each one's value passed as the next one's last argument."""
    commands = [[]]
    depth = 0
    for token in tokens:
        depth += token == "(" and 1 or token.startswith(")") and -1 or 0
        if token == "|" and depth == 0:
            commands.append([])
        else:
            commands[-1].append(token)
    value = _NOTHING
    for command in commands:
        value = _command(command, dot, value)
    return value


_NOTHING = object()


def _command(tokens, dot, piped):
    args, position = [], 1
    while position < len(tokens):
        if tokens[position] == "(":
            depth, end = 1, position + 1
            while depth:
                depth += tokens[end] == "(" and 1 or tokens[end].startswith(")") and -1 or 0
                end += 1
            value = _pipeline(tokens[position + 1:end - 1], dot)
            for key in tokens[end - 1].split(".")[1:]:  # (...).a.b
                assert isinstance(value, dict), f"nil pointer evaluating .{key}"
                value = value.get(key)
            args.append(value)
            position = end
        else:
            args.append(_operand(tokens[position], dot))
            position += 1
    if piped is not _NOTHING:
        args.append(piped)
    name = tokens[0]
    if name not in FUNCTIONS:
        assert not args, f"{name} takes no arguments"
        return _operand(name, dot)
    return FUNCTIONS[name](*args)


def _operand(token, dot):
    if token.startswith('"'):
        return json.loads(token)
    if token.isdigit():
        return int(token)
    assert token.startswith("."), f"unsupported operand {token!r}"
    value = dot
    for key in token[1:].split("."):
        assert isinstance(value, dict), f"nil pointer evaluating {token}"  # Go fails here too
        value = value.get(key)
    return value


def _index(value, *keys):
    for key in keys:
        if isinstance(value, dict):
            value = value.get(key)
        else:
            assert isinstance(value, list) and key < len(value), f"index out of range: {key}"
            value = value[key]
    return value


def _default(fallback, given):
    return given if given not in (None, "", [], {}, 0, False) else fallback


def _printf(form, *args):
    assert set(re.findall(r"%.", form)) <= {"%s"}, "only %s is emulated"
    return form.replace("%s", "{}").format(*(_text(a) for a in args))


FUNCTIONS = {
    "index": _index,
    "toJson": lambda v: go_json(v),
    "default": _default,
    "first": lambda items: items[0] if items else None,
    "sha256sum": lambda s: hashlib.sha256(s.encode()).hexdigest(),
    "trunc": lambda n, s: s[:n],
    "printf": _printf,
}


# -- the manifests ----------------------------------------------------------------------------

GIT_REPOSITORY = "https://github.com/retrain-dev/fashion-mnist-data.git"
GITLAB_REPOSITORY = "https://gitlab.com/retrain-dev/fashion-mnist-data.git"
# each of Argo Events' own sources is an overlay of its own, opted into (production and the
# watcher's modes, production-git and local-bucket, run none)
SENSORS = {"retrain-github": "production-github", "retrain-gitlab": "production-gitlab",
           "retrain-s3": "production-s3", "retrain-bucket": "local-bucket-events"}
INGRESSES = {"retrain-github": "retrain-github-events", "retrain-gitlab": "retrain-gitlab-events"}


@pytest.fixture(scope="module")
def overlays():
    return {name: build(ROOT / "manifests" / "overlays" / name)
            for name in ("production", "local-bucket", "production-git", "local",
                         "production-github", "production-gitlab", "production-s3",
                         "local-bucket-events")}


def _by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _sensor(overlays, name):
    return _by_kind(overlays[SENSORS[name]], "Sensor")[name]


def _trigger(sensor):
    [trigger] = sensor["spec"]["triggers"]
    return trigger["template"]["argoWorkflow"]


def _templates(sensor):
    """(the Workflow name's dataTemplate, the fetch spec's dataTemplate)."""
    workflow = _trigger(sensor)
    given = [p["name"] for p in workflow["source"]["resource"]["spec"]["arguments"]["parameters"]]
    by_dest = {p["dest"]: p["src"]["dataTemplate"] for p in workflow["parameters"]}
    return by_dest["metadata.name"], by_dest[f"spec.arguments.parameters.{given.index('fetch')}.value"]


def _workflow_name(source, event_id):
    from workflows.definition import workflow_name

    return workflow_name(source, event_id)


def test_the_sources_and_sensors_are_valid_against_the_released_schemas(overlays):
    for name, overlay in SENSORS.items():
        docs = overlays[overlay]
        sensor = _by_kind(docs, "Sensor")[name]
        source = _by_kind(docs, "EventSource")[sensor["spec"]["dependencies"][0]["eventSourceName"]]
        assert problems(sensor) == [] and problems(source) == []
        assert problems(_trigger(sensor)["source"]["resource"]) == []  # the Workflow too
    for name, ingress in INGRESSES.items():
        assert problems(_by_kind(overlays[SENSORS[name]], "Ingress")[ingress]) == []
    typo = json.loads(json.dumps(_by_kind(overlays["production-github"], "EventSource")["retrain-github"]))
    typo["spec"]["github"]["dataset-push"]["webhookSecrett"] = typo["spec"]["github"][
        "dataset-push"].pop("webhookSecret")
    assert any("webhookSecrett" in p for p in problems(typo))


def test_each_source_is_opted_into_by_an_overlay_of_its_own(overlays):
    """Git hosts and AWS reach a shared cluster, each through an overlay of its own on top of
    production (a GitHub-only team runs no GitLab source failing in a loop, no SQS source
    polls a queue that does not exist); production and production-git (the watcher's Git
    mode, which a source beside would run each push twice with) run none; the MinIO deployed
    in local-bucket-events is listened to there (local-bucket, the watcher's bucket mode on the
    same MinIO, runs none: with both, each change ran twice); the plain local overlay keeps the
    watcher's folder and nothing more."""
    kinds = {name: {k for s in _by_kind(docs, "EventSource").values() for k in s["spec"]
                    if k in ("github", "gitlab", "minio", "sqs")}
             for name, docs in overlays.items()}
    assert kinds == {"production": set(), "production-git": set(),
                     "production-github": {"github"}, "production-gitlab": {"gitlab"},
                     "production-s3": {"sqs"}, "local-bucket": set(),
                     "local-bucket-events": {"minio"}, "local": set()}
    for name in ("production-github", "production-gitlab", "production-s3"):
        assert {d["kind"] for d in overlays[name]} - {"Ingress"} == {
            d["kind"] for d in overlays["production"]}  # production's objects and its own
        assert len(overlays[name]) == len(overlays["production"]) + (2 if name == "production-s3" else 3)
    minio = _by_kind(overlays["local-bucket-events"], "EventSource")["retrain-bucket"]["spec"]["minio"]
    host, port = minio["dataset-objects"]["endpoint"].split(":")
    service = _by_kind(overlays["local-bucket-events"], "Service")[host.removesuffix(".retrain.svc")]
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}


def test_the_webhooks_secrets_come_from_the_named_secrets(overlays):
    sources = {**_by_kind(overlays["production-github"], "EventSource"),
               **_by_kind(overlays["production-gitlab"], "EventSource")}
    github = sources["retrain-github"]["spec"]["github"]["dataset-push"]
    gitlab = sources["retrain-gitlab"]["spec"]["gitlab"]["dataset-push"]
    assert github["webhookSecret"] == {"name": "retrain-github-webhook-secret", "key": "secret"}
    assert gitlab["secretToken"] == {"name": "retrain-gitlab-webhook-token", "key": "token"}
    assert github["events"] == ["push"] and gitlab["events"] == ["PushEvents"]
    for name, source in (("retrain-github", github), ("retrain-gitlab", gitlab)):
        ingress = _by_kind(overlays[SENSORS[name]], "Ingress")[INGRESSES[name]]["spec"]
        assert ingress["ingressClassName"] == "nginx"  # the runbook installs ingress-nginx
        paths = {p["path"]: p["backend"]["service"] for rule in ingress["rules"]
                 for p in rule["http"]["paths"]}
        port = sources[name]["spec"]["service"]["ports"][0]["port"]
        assert paths[source["webhook"]["endpoint"]] == {
            "name": f"{name}-eventsource-svc", "port": {"number": port}}
        assert source["webhook"]["port"] == str(port)


def test_each_sensor_submits_the_retrain_template_with_a_fetch_and_nothing_else(overlays):
    for name, overlay in SENSORS.items():
        sensor = _sensor(overlays, name)
        workflow = _trigger(sensor)
        resource = workflow["source"]["resource"]
        assert workflow["operation"] == "submit"
        assert resource["spec"]["workflowTemplateRef"] == {"name": "retrain"}
        assert "generateName" not in resource["metadata"]
        arguments = {p["name"]: p["value"] for p in resource["spec"]["arguments"]["parameters"]}
        assert arguments["data-uri"] == arguments["event"] == ""
        template = _by_kind(overlays[overlay], "WorkflowTemplate")["retrain"]
        declared = {p["name"] for p in template["spec"]["arguments"]["parameters"]}
        assert set(arguments) <= declared and "fetch" in declared
        assert {p["dest"] for p in workflow["parameters"]} == {
            "metadata.name", f"spec.arguments.parameters.{list(arguments).index('fetch')}.value"}
        assert sensor["spec"]["triggers"][0]["atLeastOnce"] is True


# -- GitHub and GitLab ------------------------------------------------------------------------

def github_push(ref="refs/heads/main", changed=("datasets/fashion-mnist/train-images-idx3-ubyte.gz",),
                after="6113728f27ae82c7b1a177c8d03f9e96e0adf246", message="Update the dataset",
                repository=GIT_REPOSITORY):
    """A push as GitHub's push event documents it (abridged to what the Sensor reads and a
    little around it), and the data the github EventSource dispatches for it: the request's
    headers (Go's canonical names, each a list) and the body."""
    body = {"ref": ref, "before": "0" * 39 + "1", "after": after, "created": False,
            "deleted": after == "0" * 40, "forced": False, "compare": "https://github.com/x",
            "repository": {"id": 1, "full_name": "retrain-dev/fashion-mnist-data",
                           "clone_url": repository, "default_branch": "main"},
            "pusher": {"name": "octocat", "email": "octocat@github.com"},
            "sender": {"login": "octocat"},
            "commits": [] if after == "0" * 40 else [{
                "id": after, "tree_id": "f9d2a07e9488b91af2641b26b9407fe22a451433",
                "distinct": True, "message": message, "timestamp": "2026-12-05T04:00:00Z",
                "url": f"https://github.com/retrain-dev/fashion-mnist-data/commit/{after}",
                "author": {"name": "Octo Cat", "email": "octocat@github.com"},
                "added": [], "removed": [], "modified": list(changed)}]}
    body["head_commit"] = body["commits"][0] if body["commits"] else None
    headers = {"X-Github-Event": ["push"], "X-Github-Delivery": ["72d3162e-cc78-11e3-81ab-4c9367dc0958"],
               "X-Hub-Signature-256": ["sha256=..."], "Content-Type": ["application/json"]}
    return {"headers": headers, "body": {**body, "X-GitHub-Event": "push",
                                         "X-GitHub-Delivery": headers["X-Github-Delivery"][0]}}


def gitlab_push(ref="refs/heads/main", changed=("datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz",),
                sha="da1560886d4f094c3e6c9ef40349f7d38b5d27d7", headers=None):
    """A Push Hook as GitLab documents it (abridged), and what the gitlab EventSource
    dispatches for it."""
    body = {"object_kind": "push", "event_name": "push", "before": "95790bf8" * 5, "after": sha,
            "ref": ref, "checkout_sha": sha, "user_name": "John Smith", "user_username": "jsmith",
            "project_id": 15,
            "project": {"id": 15, "name": "fashion-mnist-data",
                        "path_with_namespace": "retrain-dev/fashion-mnist-data",
                        "git_http_url": GITLAB_REPOSITORY,
                        "git_ssh_url": "git@gitlab.com:retrain-dev/fashion-mnist-data.git"},
            "commits": [{"id": sha, "message": "Update the labels", "title": "Update the labels",
                         "timestamp": "2026-12-05T04:00:00+00:00", "url": "https://gitlab.com/x",
                         "author": {"name": "John Smith", "email": "[REDACTED]"},
                         "added": list(changed), "modified": [], "removed": []}],
            "total_commits_count": 1, "repository": {"name": "fashion-mnist-data"}}
    given = headers if headers is not None else {
        "X-Gitlab-Event": ["Push Hook"], "X-Gitlab-Token": ["*** Masked ***"],
        "X-Gitlab-Event-Uuid": ["13792a34-cac6-4fda-95a8-c58e00a3954e"],
        "Idempotency-Key": ["f5e5f430-f57b-4e6e-9fac-d9128cd7232f"]}
    return {"headers": given, "body": body}


def _admits(overlays, name, data):
    [dependency] = _sensor(overlays, name)["spec"]["dependencies"]
    return admits(dependency, data)


@pytest.mark.parametrize(("push", "admitted"), [
    (github_push(), True),
    (github_push(changed=("datasets/fashion-mnist/sub/new.png",)), True),
    (github_push(changed=("datasets/fashion-mnist",)), True),  # the folder replaced by a file
    (github_push(ref="refs/heads/dev"), False),
    (github_push(ref="refs/tags/main"), False),
    (github_push(changed=("README.md",)), False),
    (github_push(changed=("datasets/fashion-mnist-old/x.gz",)), False),  # a prefix, not the folder
    (github_push(changed=("docs/x.md",), message='moved "datasets/fashion-mnist/x.gz"'), False),
    (github_push(changed=("docs/a,\"datasets/fashion-mnist/x",)), False),  # quotes in a name
    (github_push(after="0" * 40), False),  # the branch deleted
    (github_push(repository="https://github.com/octo-org/evil.git"), False),
])
def test_the_github_sensor_admits_only_pushes_to_the_branch_touching_the_dataset(
        overlays, push, admitted):
    assert _admits(overlays, "retrain-github", push) is admitted


def test_the_github_sensor_refuses_a_ping(overlays):
    ping = {"headers": {"X-Github-Event": ["ping"], "X-Github-Delivery": ["d"]},
            "body": {"zen": "Design for failure.", "hook_id": 1,
                     "repository": {"clone_url": GIT_REPOSITORY}}}
    assert _admits(overlays, "retrain-github", ping) is False


@pytest.mark.parametrize(("push", "admitted"), [
    (gitlab_push(), True),
    (gitlab_push(ref="refs/heads/feature"), False),
    (gitlab_push(changed=("notes.txt",)), False),
])
def test_the_gitlab_sensor_admits_only_pushes_to_the_branch_touching_the_dataset(
        overlays, push, admitted):
    assert _admits(overlays, "retrain-gitlab", push) is admitted


def test_the_gitlab_sensor_refuses_a_deleted_branch(overlays):
    deleted = gitlab_push()
    deleted["body"].update(after="0" * 40, checkout_sha=None, commits=[], total_commits_count=0)
    assert _admits(overlays, "retrain-gitlab", deleted) is False


def test_the_sensors_watch_what_the_watchers_git_and_bucket_modes_watch(overlays):
    """The branch, folder and bucket prefix are the values production-git and local-bucket
    give the watcher."""
    def arg(docs, flag):
        args = _by_kind(docs, "Deployment")["retrain-watcher"]["spec"]["template"]["spec"][
            "containers"][0]["args"]
        return args[args.index(flag) + 1]

    git = overlays["production-git"]
    assert arg(git, "--git") == GIT_REPOSITORY
    branch, folder = arg(git, "--git-branch"), arg(git, "--git-path")
    for name in ("retrain-github", "retrain-gitlab"):
        _, spec = _templates(_sensor(overlays, name))
        assert f'"path":"{folder}"' in spec
    assert _admits(overlays, "retrain-github", github_push(
        ref=f"refs/heads/{branch}", changed=(f"{folder}/x",))) is True
    bucket_uri = arg(overlays["local-bucket"], "--s3")
    _, spec = _templates(_sensor(overlays, "retrain-bucket"))
    bucket, prefix = bucket_uri.removeprefix("s3://").split("/", 1)
    assert f'"bucket":"{bucket}"' in spec and f'"prefix":"{prefix}/"' in spec
    minio = _by_kind(overlays["local-bucket-events"], "EventSource")["retrain-bucket"]["spec"]["minio"]
    assert minio["dataset-objects"]["bucket"]["name"] == bucket
    assert minio["dataset-objects"]["filter"]["prefix"] == prefix + "/"


def _rendered(overlays, name, data):
    named, spec = _templates(_sensor(overlays, name))
    return render(named, data), json.loads(render(spec, data))


def test_a_github_push_becomes_the_fetch_of_its_commit_named_by_its_delivery(overlays):
    push = github_push()
    name, spec = _rendered(overlays, "retrain-github", push)
    assert spec == {"kind": "git", "provider": "github", "repository": GIT_REPOSITORY,
                    "commit": push["body"]["after"], "ref": "refs/heads/main",
                    "path": "datasets/fashion-mnist",
                    "delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958", "pusher": "octocat"}
    from workflows.fetch import SOURCE, parse_spec

    parsed = parse_spec(json.dumps(spec))
    assert name == _workflow_name(SOURCE + "github", parsed.delivery)  # the fetched event's
    again = github_push(message="the same delivery, sent again")
    assert _rendered(overlays, "retrain-github", again)[0] == name  # a redelivery: no new name


def test_a_gitlab_push_is_named_by_its_idempotency_key_else_its_event_uuid(overlays):
    name, spec = _rendered(overlays, "retrain-gitlab", gitlab_push())
    assert spec["delivery"] == "f5e5f430-f57b-4e6e-9fac-d9128cd7232f"
    assert spec["commit"] == spec["commit"].lower() and spec["pusher"] == "jsmith"
    assert spec["repository"] == GITLAB_REPOSITORY and spec["provider"] == "gitlab"
    assert name == _workflow_name("retrain/fetch/gitlab", spec["delivery"])
    older = gitlab_push(headers={"X-Gitlab-Event": ["Push Hook"],
                                 "X-Gitlab-Event-Uuid": ["13792a34-cac6-4fda-95a8-c58e00a3954e"]})
    _, spec = _rendered(overlays, "retrain-gitlab", older)  # GitLab before 17.4
    assert spec["delivery"] == "13792a34-cac6-4fda-95a8-c58e00a3954e"


def test_a_push_the_sensor_admits_is_fetched_for_real(overlays, tmp_path):
    """Upstream's real push (a bare repository standing in for GitHub's), its payload through
    the Sensor's filter and templates, the spec through ``retrain step fetch``'s code."""
    from tests.conftest import write_dataset
    from tests.services.ingest_watcher.test_git import Upstream
    from workflows.fetch import fetch, parse_spec

    upstream = Upstream(tmp_path)
    write_dataset(upstream.work / "datasets" / "fashion-mnist", train=30, test=10)
    pushed = upstream.push("the dataset")
    push = github_push(after=pushed["after"], changed=pushed["commits"][0]["added"])
    assert _admits(overlays, "retrain-github", push) is True
    push["body"]["repository"]["clone_url"] = upstream.bare.as_uri()  # GitHub, here
    name, spec = _rendered(overlays, "retrain-github", push)
    fetched = fetch(parse_spec(json.dumps(spec)), tmp_path / "home")
    assert fetched.data_uri.endswith(f"/{pushed['after']}/datasets/fashion-mnist")
    assert name == _workflow_name(fetched.event.source, fetched.event.id)


# -- MinIO and S3 -----------------------------------------------------------------------------

def s3_record(key, bucket="fashion-mnist", source="minio:s3", request="17E3BB2B6C3E3E5B"):
    """A record of a bucket notification as S3 and MinIO document it (keys URL-encoded)."""
    from urllib.parse import quote_plus

    encoded = quote_plus(key) if source == "minio:s3" else quote_plus(key, safe="/")
    return {"eventVersion": "2.0", "eventSource": source, "awsRegion": "",
            "eventTime": "2026-12-05T04:00:00.000Z", "eventName": "s3:ObjectCreated:Put",
            "userIdentity": {"principalId": "minioadmin"},
            "requestParameters": {"sourceIPAddress": "10.42.0.7"},
            "responseElements": {"x-amz-request-id": request,
                                 "x-minio-origin-endpoint": "http://10.42.0.9:9000"},
            "s3": {"s3SchemaVersion": "1.0", "configurationId": "Config",
                   "bucket": {"name": bucket, "ownerIdentity": {"principalId": "minioadmin"},
                              "arn": f"arn:aws:s3:::{bucket}"},
                   "object": {"key": encoded, "size": 4, "eTag": "e0e4d0b3ee7e6f0b8b9a7e5b1f0c1e2d",
                              "contentType": "application/gzip", "sequencer": "17E3BB2B6C8F6F35"}}}


def minio_event(*records):
    """What the minio EventSource dispatches: the notification's records."""
    return {"notification": list(records)}


def sqs_event(*records):
    """What the sqs EventSource dispatches (jsonBody): the message's id and S3's notification."""
    return {"messageId": "b6a1d3c8-3f4e-4b8a-9a77-0c2e0f0d1a2b", "messageAttributes": None,
            "body": {"Records": list(records)}}


@pytest.mark.parametrize(("event", "admitted"), [
    (minio_event(s3_record("datasets/fashion-mnist/train-images-idx3-ubyte.gz")), True),
    (minio_event(s3_record("datasets/other/x.gz")), False),
    (minio_event(s3_record("datasets/fashion-mnist-old/x.gz")), False),
    (minio_event(s3_record("datasets/fashion-mnist/x.gz", bucket="elsewhere")), False),
])
def test_the_minio_sensor_admits_only_objects_under_the_prefix(overlays, event, admitted):
    assert _admits(overlays, "retrain-bucket", event) is admitted


@pytest.mark.parametrize(("event", "admitted"), [
    (sqs_event(s3_record("datasets/fashion-mnist/a b.gz", "retrain-fashion-mnist", "aws:s3")), True),
    (sqs_event(s3_record("datasets/other/x.gz", "retrain-fashion-mnist", "aws:s3")), False),
    (sqs_event(s3_record("datasets/fashion-mnist/x.gz", "another", "aws:s3")), False),
    ({"messageId": "m", "body": {"Service": "Amazon S3", "Event": "s3:TestEvent",
                                 "Bucket": "retrain-fashion-mnist"}}, False),
])
def test_the_s3_sensor_admits_only_objects_under_the_prefix(overlays, event, admitted):
    assert _admits(overlays, "retrain-s3", event) is admitted


def test_a_notification_becomes_the_fetch_of_the_prefix_named_by_its_request(overlays):
    from workflows.fetch import parse_spec

    key = "datasets/fashion-mnist/train-labels-idx1-ubyte.gz"
    name, spec = _rendered(overlays, "retrain-bucket", minio_event(s3_record(key)))
    assert (spec["kind"], spec["provider"], spec["bucket"], spec["prefix"], spec["delivery"]) == (
        "s3", "minio", "fashion-mnist", "datasets/fashion-mnist/", "17E3BB2B6C3E3E5B")
    parsed = parse_spec(json.dumps(spec))
    assert [o.key for o in parsed.objects] == [key]  # the watcher's reading of the records
    assert name == _workflow_name("retrain/fetch/minio", "17E3BB2B6C3E3E5B")
    name, spec = _rendered(overlays, "retrain-s3", sqs_event(
        s3_record("datasets/fashion-mnist/a b.gz", "retrain-fashion-mnist", "aws:s3", "C3D13FE58DE4C810")))
    assert [o.key for o in parse_spec(json.dumps(spec)).objects] == ["datasets/fashion-mnist/a b.gz"]
    assert name == _workflow_name("retrain/fetch/s3", "C3D13FE58DE4C810")


def test_a_notification_the_sensor_admits_is_fetched_for_real(overlays, tmp_path, s3):  # noqa: F811
    from tests.services.ingest_watcher.test_s3 import upload_dataset
    from workflows.fetch import fetch, parse_spec

    client, bucket = s3
    local = upload_dataset(client, bucket, tmp_path, prefix="datasets/fashion-mnist/",
                           train=30, test=10)
    records = [s3_record("datasets/fashion-mnist/" + p.name, bucket) for p in sorted(local.iterdir())]
    event = minio_event(*records)
    _, spec = _rendered(overlays, "retrain-bucket", event)
    spec["bucket"] = bucket  # this test's bucket stands in for the overlay's
    fetched = fetch(parse_spec(json.dumps(spec)), tmp_path / "home", s3_client=lambda: client)
    assert sorted(p.name for p in Path(fetched.data_uri).iterdir()) == sorted(
        p.name for p in local.iterdir())
    assert fetched.event.data.trigger == "minio" and len(fetched.event.data.origin.objects) == 4


# -- the watcher's webhook ----------------------------------------------------------------------

def test_the_watchers_webhook_is_answered_once_the_bus_holds_the_event(overlays):
    """Argo Events' webhook answers after publishing (its 500 when the publish fails is what
    the watcher's outbox retries); what it published, the JetStream bus keeps on disk, and
    the Sensor acknowledges only once its trigger ran."""
    docs = overlays["local"]
    bus = _by_kind(docs, "EventBus")["default"]["spec"]["jetstream"]
    assert bus["persistence"]["volumeSize"] and bus["replicas"] >= 3
    [trigger] = _by_kind(docs, "Sensor")["retrain-dataset"]["spec"]["triggers"]
    assert trigger["atLeastOnce"] is True
    text = (ROOT / "manifests" / "base" / "events" / "eventsources.yaml").read_text()
    assert "answers a delivery only once the event is on the EventBus" in text


def _config(docs):
    return _by_kind(docs, "ConfigMap")["retrain-config"]["data"]


def test_the_fetch_step_may_clone_exactly_what_the_git_sensors_admit(overlays):
    from core.settings import Settings

    allowed = Settings(_env_file=None, fetch_repositories=_config(overlays["production"])
                       ["RETRAIN_FETCH_REPOSITORIES"]).fetch_repositories
    admitted = set()
    for name in ("retrain-github", "retrain-gitlab"):
        for dependency in _sensor(overlays, name)["spec"]["dependencies"]:
            for check in dependency["filters"]["data"]:
                if check["path"] in ("body.repository.clone_url", "body.project.git_http_url"):
                    [pattern] = check["value"]
                    admitted.add(pattern.strip("^$").replace("\\.", "."))
    assert admitted and set(allowed) == admitted


def test_the_local_bucket_fetch_step_reads_the_minio_deployed_beside_it(overlays):
    endpoint = _config(overlays["local-bucket-events"])["RETRAIN_S3_ENDPOINT"]
    minio = _by_kind(overlays["local-bucket-events"], "Service")["retrain-minio"]
    assert endpoint == f"http://retrain-minio.retrain.svc:{minio['spec']['ports'][0]['port']}"
    assert "RETRAIN_S3_ENDPOINT" not in _config(overlays["production"])  # AWS itself


def _minio(docs):
    return _by_kind(docs, "Deployment")["retrain-minio"]["spec"]["template"]


def test_each_local_bucket_is_taken_one_way(overlays):
    """local-bucket: MinIO notifies the watcher (bucket mode) and no Argo Events source
    listens; local-bucket-events: Argo Events' MinIO source listens, the watcher keeps its
    folder and MinIO notifies nothing. Otherwise the same MinIO, its data on a volume."""
    watcher = overlays["local-bucket"]
    events = overlays["local-bucket-events"]

    def args(docs):
        return _by_kind(docs, "Deployment")["retrain-watcher"]["spec"]["template"]["spec"][
            "containers"][0]["args"]

    def notifies(docs):
        [minio] = _minio(docs)["spec"]["containers"]
        return sorted(e["name"] for e in minio["env"] if e["name"].startswith("MINIO_NOTIFY_"))

    assert args(watcher)[:2] == ["watch", "--s3"] and notifies(watcher)
    assert _minio(watcher)["metadata"]["labels"]["retrain.dev/notifies-watcher"] == "true"
    assert "minio" not in {k for s in _by_kind(watcher, "EventSource").values() for k in s["spec"]}
    assert args(events)[:2] == ["watch", "--data"] and notifies(events) == []
    assert "retrain.dev/notifies-watcher" not in _minio(events)["metadata"]["labels"]
    assert "retrain-minio-webhook" not in _by_kind(events, "Secret")
    [job] = _by_kind(events, "Job")["retrain-minio-setup"]["spec"]["template"]["spec"]["containers"]
    assert "mc mb" in job["args"][0] and "mc event add" not in job["args"][0]
    for docs in (watcher, events):  # a restart keeps the bucket's objects
        volumes = {v["name"]: v for v in _minio(docs)["spec"]["volumes"]}
        claim = volumes["data"]["persistentVolumeClaim"]["claimName"]
        assert claim in _by_kind(docs, "PersistentVolumeClaim")
