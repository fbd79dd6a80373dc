"""``retrain replay``: the recorded dataset events sent again to a real trigger, with new ids
and ``replayof`` and only the parameters they carried, and the runs the trigger starts for
them; to a cluster's webhook in structured mode, which its Sensor admits."""

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from events import make_event
from events.payloads import RunParameters
from retrain.cli import app
from retrain.commands.replay import carried_parameters
from tests.conftest import free_port, write_dataset
from tests.manifests.kustomize import build
from workflows import record
from workflows.queue import RunQueue
from workflows.runner import LocalRunner, RunRequest

pytestmark = pytest.mark.integration
KEY = "replay-key"
# today's defaults (the trigger's) and those in force when the runs were recorded
PARAMETERS = RunParameters(models=("cnn",), steps_per_epoch=2, batch_size=32, validation="off")
THEN = RunParameters(models=("cnn", "dropout"), epochs=3, validation="warn")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def trigger(r):
    """The local trigger as ``retrain up`` runs it: run requests go to the run queue."""
    from core.http import BackgroundServer, bind
    from events.dedup import Deduplicator
    from events.receiver import FromSender
    from workflows.trigger import Trigger, create_app

    routes = Trigger(r, judge=lambda event: None, default_parameters=PARAMETERS)
    server = BackgroundServer(create_app(Deduplicator(r, 60, "trigger"),
                                         FromSender(routes.dispatch), (KEY,), client=r),
                              bind("127.0.0.1", 0, "trigger"), "trigger").start()
    yield server
    server.stop()


def _updated(folder, source, **fields):
    """What the watcher sends: no parameters (its runs take the trigger's defaults)."""
    return make_event("dataset.updated", {
        "uri": str(folder), "digest": f"d-{source}", "trigger": "watcher",
        "files": {"added": ["increments/b1/x.png"]},
        "origin": {"kind": "folder", "folder": str(folder)}, **fields}, source=source)


def _recorded(r, *events, defaults=THEN):
    """The runs these events started, as the runner records them when it takes them (with
    the trigger's defaults of the time)."""
    for event in events:
        record.RunRecorder(r, RunRequest.from_event(event, defaults))
    return events


def _replay(settings, redis_handle, *args, port=None):
    env = {"RETRAIN_HOME": str(settings.home), "RETRAIN_REDIS_URL": redis_handle.url,
           "RETRAIN_API_KEYS": KEY, "RETRAIN_EVENTS_PORT": str(port or free_port())}
    done = CliRunner().invoke(app, ["replay", *args], env=env)
    return done.exit_code, done.output, done.exception


def _queued(r):
    from workflows.queue import RunQueue

    return RunQueue(r).queued()


def test_replay_sends_each_recorded_event_again_and_the_trigger_starts_its_run(
        settings, redis_handle, r, tmp_path, trigger, standin_trainer):
    a, b = (write_dataset(tmp_path / name, train=400, test=100, seed=n)
            for n, name in enumerate("ab"))
    first, second = _recorded(r, _updated(a, "tests/a"), _updated(b, "tests/b"))
    _recorded(r, make_event("training.requested", {"uri": str(a)}, source="tests/hand"))

    code, output, error = _replay(settings, redis_handle, "--since", "1h", "--json",
                                  port=trigger.port)  # the default: this machine's trigger
    assert code == 0, (output, error)
    said = [json.loads(text) for text in output.splitlines() if text.startswith("{")]
    assert [(s["status"], s["replayof"], s["source"]) for s in said] == [
        ("sent", first.id, "tests/a"), ("sent", second.id, "tests/b")]
    assert {s["id"] for s in said}.isdisjoint({first.id, second.id})

    queued = _queued(r)  # the trigger took them: a run request each, as any dataset.updated
    assert [(q.event["replayof"], q.event_id, q.data_uri) for q in queued] == [
        (first.id, said[0]["id"], str(a)), (second.id, said[1]["id"], str(b))]
    assert queued[0].event["digest"] == "d-tests/a"
    assert queued[0].parameters == PARAMETERS  # today's defaults, not those of the time
    assert queued[0].event["origin"] == {**first.data.origin.model_dump(mode="json")}

    runner = LocalRunner(settings, r, redis_handle.url, lambda event: None, Console(quiet=True))
    queue = RunQueue(r)
    taken = queue.take(1)
    summary = runner.run(taken.request)
    queue.done(taken)
    assert summary["status"] == "succeeded", summary
    assert summary["event"]["replayof"] == first.id and summary["models"]["cnn"]["status"] == "trained"

    code, output, _ = _replay(settings, redis_handle, "--since", "1h", "--json",
                              port=trigger.port)  # a replay of replays names the originals
    again = [json.loads(text) for text in output.splitlines() if text.startswith("{")]
    assert code == 0 and [s["replayof"] for s in again] == [first.id, second.id]


def test_a_dry_run_lists_what_it_would_send_and_sends_nothing(settings, redis_handle, r,
                                                              tmp_path, trigger):
    first, second = _recorded(r, _updated(tmp_path / "a", "tests/a"),
                              _updated(tmp_path / "b", "tests/b"))
    code, output, error = _replay(settings, redis_handle, "--since", "1h", "--dry-run",
                                  port=trigger.port)
    assert code == 0, (output, error)
    lines = [text for text in output.splitlines() if text.startswith("would send")]
    assert len(lines) == 2 and f"replayof {first.id}" in lines[0] and "tests/a" in lines[0]
    assert _queued(r) == []

    code, output, _ = _replay(settings, redis_handle, "--since", "1h", "--dry-run", "--source",
                              str(tmp_path / "b"), port=trigger.port)  # its origin's folder
    assert code == 0 and [t for t in output.splitlines() if t.startswith("would send")] == [
        next(t for t in lines if second.id in t)]


def test_runs_before_since_are_not_replayed(settings, redis_handle, r, tmp_path, trigger):
    _recorded(r, _updated(tmp_path / "a", "tests/a"))
    later = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() + 60))
    code, output, _ = _replay(settings, redis_handle, "--since", later, "--dry-run",
                              port=trigger.port)
    assert code == 0 and "dry run: 0 event(s) recorded since" in output


def test_an_unreachable_trigger_is_a_clear_error_and_nothing_is_half_sent(settings, redis_handle,
                                                                        r, tmp_path):
    first, = _recorded(r, _updated(tmp_path / "a", "tests/a"))
    code, _, error = _replay(settings, redis_handle, "--since", "2h")
    assert code == 1 and error.exit_code == 1
    message = str(error)
    assert "did not take a replayed event" in message and "nothing was sent" in message
    assert f"not sent: {first.id}" in message


@pytest.mark.parametrize("since", ["yesterday", "2 hours", "-1h"])
def test_a_bad_since_is_refused_with_what_is_expected(settings, redis_handle, since):
    _, _, error = _replay(settings, redis_handle, "--since", since)
    assert error.exit_code == 2 and "expected an ISO 8601 time" in str(error)


def test_a_persons_parameters_are_replayed_and_the_defaults_of_the_time_are_not(
        settings, redis_handle, r, tmp_path, trigger):
    """A hand-sent event's choices go again; what its run took from the defaults of the time
    does not, so today's apply (the fields equal to today's built-in defaults are the same
    either way)."""
    chosen = RunParameters(models=("dropout",), epochs=2)
    _recorded(r, _updated(tmp_path / "a", "retrain/cli", trigger="manual",
                          parameters=chosen.model_dump()))
    code, output, error = _replay(settings, redis_handle, "--since", "1h", port=trigger.port)
    assert code == 0, (output, error)
    [queued] = _queued(r)
    assert queued.parameters == chosen != THEN


def test_what_a_run_recorded_decides_which_parameters_its_event_carried():
    summary = {"parameters": THEN.model_dump(mode="json")}  # what the run trained with
    assert carried_parameters(summary, {"trigger": "watcher"}) is None  # never sends any
    assert carried_parameters(summary, {"trigger": "github"}) is None
    assert carried_parameters(summary, {"trigger": "manual"}) == {
        "models": ["cnn", "dropout"], "epochs": 3, "validation": "warn"}  # differs from today's
    assert carried_parameters({"parameters": RunParameters().model_dump(mode="json")},
                              {"trigger": "manual"}) is None
    said = {"trigger": "watcher", "parameters": {"epochs": 4}}  # a record that says: as said
    assert carried_parameters(summary, said) == {"epochs": 4}


def test_events_of_one_source_replayed_together_say_they_coalesce(settings, redis_handle, r,
                                                                  tmp_path, trigger):
    folder = tmp_path / "a"
    _recorded(r, *(_updated(folder, "tests/a", digest=f"d{n}") for n in range(3)),
              _updated(tmp_path / "b", "tests/b"))
    code, output, error = _replay(settings, redis_handle, "--since", "1h", port=trigger.port)
    assert code == 0, (output, error)
    said = " ".join(output.split())
    assert "4 event(s) recorded since" in said and f"3 for folder:{folder}: events of one " \
        "source coalesce, so each source gets one run (two if one is already working)" in said
    assert "folder:" + str(tmp_path / "b") not in said
    assert len(_queued(r)) == 2  # the waiting run of tests/a replaced twice, tests/b's


@pytest.fixture
def webhook():
    """A stand-in for Argo Events' webhook EventSource: answers 200 to any POST, as it does
    whether or not its Sensor then admits the event, and keeps each request's body."""
    bodies = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Length", "7")
            self.end_headers()
            self.wfile.write(b"success")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/dataset-updated", bodies
    server.shutdown()
    server.server_close()


def _sensor_starts_a_workflow(body: bytes) -> bool:
    """Whether the retrain-dataset Sensor (manifests/base/events/sensors.yaml) admits a
    webhook request with this body: every data filter matches ("and"), and the body holds
    the source and id its Workflow is named from."""
    docs = build(ROOT / "manifests" / "overlays" / "local")
    sensor = next(d for d in docs if d["kind"] == "Sensor"
                  and d["metadata"]["name"] == "retrain-dataset")
    [dependency] = sensor["spec"]["dependencies"]
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    for data_filter in dependency["filters"]["data"]:
        value = parsed
        for key in data_filter["path"].removeprefix("body.").split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if not isinstance(value, str) or not any(re.search(p, value) for p in data_filter["value"]):
            return False
    name = sensor["spec"]["triggers"][0]["template"]["argoWorkflow"]["parameters"][0]
    assert ".Input.body.source" in name["src"]["dataTemplate"]
    return bool(parsed.get("source")) and bool(parsed.get("id"))


def test_a_replay_to_a_clusters_webhook_is_structured_and_passes_the_sensors_filter(
        settings, redis_handle, r, webhook):
    url, bodies = webhook
    first, = _recorded(r, _updated("/var/lib/retrain/data/fashion-mnist", "retrain/watcher/f"))
    code, output, error = _replay(settings, redis_handle, "--since", "1h", "--events-url", url)
    assert code == 0, (output, error)
    [body] = bodies
    assert _sensor_starts_a_workflow(body)
    sent = json.loads(body)
    assert sent["type"] == "dev.retrain.dataset.updated" and sent["replayof"] == first.id
    assert sent["id"] != first.id
    assert sent["data"].get("parameters") is None  # null, as the watcher sends: plan's defaults

    code, _, _ = _replay(settings, redis_handle, "--since", "1h", "--events-url", url,
                         "--binary")  # the data alone in the body: the Sensor drops it
    assert code == 0 and len(bodies) == 2 and not _sensor_starts_a_workflow(bodies[1])
