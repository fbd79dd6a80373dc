import json

import pytest

from events import EventType, make_event
from events.codec import BATCH, decode, encode
from events.envelope import Event
from events.payloads import DatasetUpdated
from events.errors import InvalidPayloadError, MalformedEventError, UnknownEventTypeError


def _event():
    return make_event("dataset.updated", {"uri": "/data/fm", "trigger": "manual",
                                          "parameters": {"models": ["cnn"], "epochs": 2}},
                      source="tests")


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_round_trip_keeps_every_attribute_and_the_payload(mode):
    event = _event()
    headers, body = encode(event, mode)
    assert decode(headers, body) == [event]


def test_binary_mode_puts_attributes_in_ce_headers():
    headers, body = encode(_event(), "binary")
    assert headers["ce-type"] == "dev.retrain.dataset.updated"
    assert headers["ce-source"] == "tests"
    assert json.loads(body)["uri"] == "/data/fm"


def test_batched_structured_mode_yields_every_event():
    events = [_event(), _event()]
    items = [json.loads(encode(e, "structured")[1]) for e in events]
    decoded = decode({"Content-Type": BATCH}, json.dumps(items).encode())
    assert [e.id for e in decoded] == [e.id for e in events]


def test_missing_attributes_are_all_listed():
    with pytest.raises(MalformedEventError) as info:
        decode({"content-type": "application/json", "ce-type": "dev.retrain.dataset.updated"}, b"{}")
    assert {p.split("'")[1] for p in info.value.problems} == {"specversion", "id", "source"}


def test_structured_missing_attributes_are_all_listed():
    with pytest.raises(MalformedEventError) as info:
        decode({"content-type": "application/cloudevents+json"}, b'{"data": {}}')
    assert len(info.value.problems) == 4


def test_unknown_type_is_refused():
    headers = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "x", "ce-type": "com.other.thing",
               "content-type": "application/json"}
    with pytest.raises(UnknownEventTypeError):
        decode(headers, b"{}")


def test_payload_is_validated_against_its_model():
    headers, _ = encode(_event(), "binary")
    with pytest.raises(InvalidPayloadError) as info:
        decode(headers, json.dumps({"uri": "/x", "parameters": {"models": ["resnet"]}}).encode())
    assert "resnet" in str(info.value)


def test_malformed_json_is_a_clear_error():
    with pytest.raises(MalformedEventError, match="not valid JSON"):
        decode({"content-type": "application/cloudevents+json"}, b"{nope")


def test_short_type_names_are_accepted():
    assert EventType.parse("model.trained") is EventType.MODEL_TRAINED


def test_structured_data_base64_from_the_cloudevents_sdk_is_decoded():
    """The SDK writes bytes data as data_base64; the spec asks receivers to decode it."""
    from cloudevents.v1.conversion import to_structured
    from cloudevents.v1.http import CloudEvent

    sent = CloudEvent({"type": "dev.retrain.dataset.updated", "source": "sdk",
                       "datacontenttype": "application/json"},
                      json.dumps({"uri": "/data/fm", "trigger": "s3"}).encode())
    headers, body = to_structured(sent)
    assert b"data_base64" in body
    [event] = decode(headers, body)
    assert event.data.uri == "/data/fm" and event.data.trigger == "s3" and event.source == "sdk"
    [batched] = decode({"content-type": "application/cloudevents-batch+json"},
                       b"[" + body + b"]")
    assert batched.data == event.data


@pytest.mark.parametrize(("extra", "message"), [
    ('"data_base64": "!!"', "data_base64 is not valid base64"),
    ('"data_base64": 7', "data_base64 is not valid base64"),
    ('"data_base64": "e30=", "data": {}', "data or data_base64, not both"),
    ('"data_base64": "AAAA"', "data is not valid JSON"),
])
def test_bad_data_base64_is_a_clear_error(extra, message):
    body = ('{"specversion": "1.0", "id": "1", "source": "s", '
            '"type": "dev.retrain.dataset.updated", ' + extra + "}").encode()
    with pytest.raises(MalformedEventError, match=message):
        decode({"content-type": "application/cloudevents+json"}, body)


def test_a_batch_item_that_is_not_an_object_is_named():
    with pytest.raises(MalformedEventError,
                       match="event 1: a structured event must be a JSON object"):
        decode({"content-type": BATCH}, json.dumps(
            [json.loads(encode(make_event("dataset.updated", {"uri": "/d"}, source="t"),
                               "structured")[1]), 7]).encode())


# extension attributes ---------------------------------------------------------------------------
def _replay():
    return make_event("dataset.updated", {"uri": "/data/fm"}, source="tests",
                      extensions={"replayof": "fashion-mnist@3:abc"})


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_extensions_round_trip(mode):
    event = _replay()
    headers, body = encode(event, mode)
    [decoded] = decode(headers, body)
    assert decoded.extensions == {"replayof": "fashion-mnist@3:abc"} and decoded == event


def test_binary_mode_sends_an_extension_as_a_ce_header_and_structured_as_an_attribute():
    headers, _ = encode(_replay(), "binary")
    assert headers["ce-replayof"] == "fashion-mnist@3:abc"
    _, body = encode(_replay(), "structured")
    assert json.loads(body)["replayof"] == "fashion-mnist@3:abc"


def test_batched_events_keep_their_own_extensions():
    items = [json.loads(encode(e, "structured")[1]) for e in (_replay(), _event())]
    first, second = decode({"content-type": BATCH}, json.dumps(items).encode())
    assert first.extensions == {"replayof": "fashion-mnist@3:abc"} and second.extensions == {}


@pytest.mark.parametrize("convert", ["to_binary", "to_structured"])
def test_an_extension_sent_by_the_cloudevents_sdk_with_its_defaults_is_kept(convert):
    """The SDK fills in id, time and specversion; every extension it sends arrives, unknown
    ones too, typed values as CloudEvents' canonical strings."""
    from cloudevents.v1 import conversion
    from cloudevents.v1.http import CloudEvent

    sent = CloudEvent({"type": "dev.retrain.dataset.updated", "source": "sdk",
                       "replayof": "original-1", "traceparent": "00-abc-def-01",
                       "partition": 3, "sampled": True}, {"uri": "/data/fm"})
    headers, body = getattr(conversion, convert)(sent)
    [event] = decode(headers, body)
    assert event.id == sent["id"] and event.time == sent["time"]
    assert event.extensions == {"replayof": "original-1", "traceparent": "00-abc-def-01",
                                "partition": "3", "sampled": "true"}


def test_the_spec_attributes_are_not_taken_as_extensions():
    headers, body = encode(_event(), "binary")
    headers |= {"ce-subject": "s", "ce-dataschema": "https://example.com/schema"}
    [event] = decode(headers, body)
    assert event.extensions == {} and event.subject == "s"


def test_bad_extension_names_are_all_named():
    item = json.loads(encode(_event(), "structured")[1]) | {
        "Replay-Of": "x", "replay_of": "y", "x" * 65: "z"}
    with pytest.raises(MalformedEventError) as info:
        decode({"content-type": "application/cloudevents+json"}, json.dumps(item).encode())
    said = " ".join(info.value.problems)
    assert len(info.value.problems) == 3
    assert "'replay-of'" in said and "'replay_of'" in said and "at most 64" in said


@pytest.mark.parametrize(("extra", "message"), [
    ({f"x{n}": "v" for n in range(17)}, "17 extension attributes: at most 16"),
    ({"big": "v" * 1025}, "'big': a value of at most 1024 characters"),
    ({"nested": {"a": 1}}, "'nested': a string, number or boolean expected"),
])
def test_extensions_are_bounded(extra, message):
    item = json.loads(encode(_event(), "structured")[1]) | extra
    with pytest.raises(MalformedEventError, match=message):
        decode({"content-type": "application/cloudevents+json"}, json.dumps(item).encode())


def test_retrain_sends_no_extension_the_spec_would_not_name():
    event = make_event("dataset.updated", {"uri": "/d"}, source="t",
                       extensions={"replayoftheveryfirstevent": "x", "id": "y"})
    with pytest.raises(MalformedEventError) as info:
        encode(event)
    assert any("at most 20" in p for p in info.value.problems)
    assert any("reserves" in p for p in info.value.problems)


def test_binary_headers_are_percent_encoded_as_the_http_binding_asks():
    """Space, '"', '%' and anything outside printable ASCII travel percent-encoded in ce-*
    headers (the 2.x SDK's own binding encodes and decodes them): what one side sends, the
    other reads back as it was."""
    from cloudevents.core.bindings.http import to_binary_event as to_binary
    from cloudevents.core.v1.event import CloudEvent

    said = "run 5/ü \"50%\""
    headers, body = encode(Event(type=EventType.DATASET_UPDATED, source=said,
                                 data=DatasetUpdated(uri="/data/fm"),
                                 extensions={"replayof": said}), "binary")
    assert headers["ce-source"] == "run%205/%C3%BC%20%2250%25%22"
    [event] = decode(headers, body)
    assert event.source == said and event.extensions == {"replayof": said}

    sent = to_binary(CloudEvent({"type": "dev.retrain.dataset.updated", "source": said,
                                 "id": "x 1", "specversion": "1.0", "replayof": said},
                                {"uri": "/data/fm"}))
    [event] = decode(dict(sent.headers), sent.body)
    assert (event.source, event.id, event.extensions) == (said, "x 1", {"replayof": said})
