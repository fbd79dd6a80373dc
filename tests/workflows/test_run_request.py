import pytest

from events import make_event
from events.payloads import RunParameters
from workflows.runner import RunRequest


def test_event_parameters_win_over_defaults():
    event = make_event("dataset.updated", {"uri": "/d", "trigger": "github",
                                           "parameters": {"models": ["dropout"], "epochs": 3}},
                       source="s", id="e1")
    request = RunRequest.from_event(event, RunParameters(epochs=9))
    assert request.parameters.models == ("dropout",) and request.parameters.epochs == 3
    assert (request.trigger, request.event_id, request.data_uri) == ("dataset.updated/github", "e1", "/d")


def test_defaults_apply_when_the_event_has_none():
    event = make_event("dataset.updated", {"uri": "/d"}, source="s")
    assert RunRequest.from_event(event, RunParameters(epochs=9)).parameters.epochs == 9
    assert RunRequest.from_event(event).parameters == RunParameters()


def test_round_trips_through_json():
    request = RunRequest("/d", RunParameters(models=("cnn",), cache_policy="max-age=1h"), "cli", "x")
    assert RunRequest.from_json(request.to_json()) == request


def test_other_events_do_not_request_runs():
    event = make_event("training.failed", {"run_id": "r", "model_type": "cnn", "reason": "x"}, source="s")
    with pytest.raises(ValueError, match="does not request a run"):
        RunRequest.from_event(event)
