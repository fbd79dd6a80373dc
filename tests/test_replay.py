"""``retrain replay``: the recorded dataset events sent again to a real trigger, with new ids
and ``replayof``, and the runs the trigger starts for them."""

import json
import time

import pytest
from rich.console import Console
from typer.testing import CliRunner

from events import make_event
from events.payloads import RunParameters
from retrain.cli import app
from tests.conftest import free_port, write_dataset
from workflows import record
from workflows.queue import RunQueue
from workflows.runner import LocalRunner, RunRequest

pytestmark = pytest.mark.integration
KEY = "replay-key"
PARAMETERS = RunParameters(models=("cnn",), steps_per_epoch=2, batch_size=32, validation="off")


@pytest.fixture
def trigger(r):
    """The local trigger as ``retrain up`` runs it: run requests go to the run queue."""
    from core.http import BackgroundServer, bind
    from events.dedup import Deduplicator
    from events.receiver import FromSender
    from workflows.trigger import Trigger, create_app

    routes = Trigger(r, judge=lambda event: None)
    server = BackgroundServer(create_app(Deduplicator(r, 60, "trigger"),
                                         FromSender(routes.dispatch), (KEY,), client=r),
                              bind("127.0.0.1", 0, "trigger"), "trigger").start()
    yield server
    server.stop()


def _updated(folder, source, **fields):
    return make_event("dataset.updated", {
        "uri": str(folder), "digest": f"d-{source}", "trigger": "watcher",
        "files": {"added": ["increments/b1/x.png"]}, "parameters": PARAMETERS.model_dump(),
        "origin": {"kind": "folder", "folder": str(folder)}, **fields}, source=source)


def _recorded(r, *events):
    """The runs these events started, as the runner records them when it takes them."""
    for event in events:
        record.RunRecorder(r, RunRequest.from_event(event))
    return events


def _replay(settings, redis_handle, *args, port=None):
    env = {"RETRAIN_HOME": str(settings.home), "RETRAIN_REDIS_URL": redis_handle.url,
           "RETRAIN_API_KEYS": KEY, "RETRAIN_EVENTS_PORT": str(port or free_port())}
    done = CliRunner().invoke(app, ["replay", *args], env=env)
    return done.exit_code, done.output, done.exception


def _queued(r):
    return [RunRequest.from_json(raw) for raw in r.lrange("retrain:queue", 0, -1)]


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
    assert queued[0].event["digest"] == "d-tests/a" and queued[0].parameters == PARAMETERS
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
