"""HTTP encoding and decoding of CloudEvents.

The only module that imports the CloudEvents SDK. Its 2.x release moved the 1.x API to
``cloudevents.v1``; the ``kserve`` SDK pins ``cloudevents<2``. Both are accepted here.
Encoding is pure: it returns headers and a body and sends nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import quote, unquote

try:  # cloudevents >= 2
    from cloudevents.v1 import exceptions as ce_errors
    from cloudevents.v1.conversion import to_binary, to_structured
    from cloudevents.v1.http import CloudEvent, from_dict, from_http
except ImportError:  # cloudevents 1.x
    from cloudevents import exceptions as ce_errors  # type: ignore[no-redef]
    from cloudevents.conversion import to_binary, to_structured  # type: ignore[no-redef]
    from cloudevents.http import CloudEvent, from_dict, from_http  # type: ignore[no-redef]

from events.envelope import Event, parse_payload
from events.errors import MalformedEventError
from events.types import EventType

Mode = Literal["binary", "structured"]
REQUIRED = ("specversion", "id", "source", "type")
STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
# the attributes the CloudEvents 1.0 spec defines (and its JSON format's data members): never
# taken as extensions
RESERVED = frozenset({"specversion", "id", "source", "type", "datacontenttype", "dataschema",
                      "subject", "time", "data", "data_base64"})
NAME = re.compile(r"[a-z0-9]+")  # the spec's MUST for an attribute's name
SENT_NAME_LENGTH = 20  # the spec's SHOULD: what retrain itself sends
# what a received event may carry, so hostile input stays bounded (every problem is named)
MAX_NAME_LENGTH = 64
MAX_EXTENSIONS = 16
MAX_EXTENSION_VALUE = 1024


def encode(event: Event, mode: Mode = "binary") -> tuple[dict[str, str], bytes]:
    """Headers and body of an HTTP request carrying ``event``."""
    attributes: dict[str, Any] = {
        "type": event.type.value,
        "source": event.source,
        "id": event.id,
        "time": event.time,
        "datacontenttype": "application/json",
    }
    if event.subject:
        attributes["subject"] = event.subject
    problems = extension_problems(event.extensions, SENT_NAME_LENGTH)
    if problems:
        raise MalformedEventError(problems)
    attributes.update(event.extensions)
    ce = CloudEvent(attributes, event.data.model_dump(mode="json"))
    if mode == "structured":
        headers, body = to_structured(ce)
        return dict(headers), body
    headers, body = to_binary(ce)
    return {k: _header_value(k, v) for k, v in headers.items()}, body


# what a ce-* header may carry as it is (the HTTP binding, 3.1.3.2: space, '"', '%' and
# anything outside printable ASCII are percent-encoded by the sender, decoded by the receiver)
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')


def _header_value(name: str, value: Any) -> Any:
    if name.lower().startswith("ce-") and isinstance(value, str):
        return quote(value, safe=_HEADER_SAFE)
    return value


def decode(headers: Mapping[str, str], body: bytes) -> list[Event]:
    """Events in a request, in binary, structured or batched structured mode.

    Raises ``MalformedEventError`` listing every problem found, ``UnknownEventTypeError``
    for a type outside ``dev.retrain.*`` and ``InvalidPayloadError`` for bad data.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    content_type = lowered.get("content-type", "").split(";")[0].strip().lower()
    if content_type == BATCH:
        items = _json(body)
        if not isinstance(items, list):
            raise MalformedEventError(["batched mode body must be a JSON array of events"])
        if not items:
            raise MalformedEventError(["batched mode body holds no events"])
        return [_from_structured_dict(item, index) for index, item in enumerate(items)]
    if content_type == STRUCTURED:
        return [_from_structured_dict(_json(body), None)]
    missing = [a for a in REQUIRED if not lowered.get(f"ce-{a}")]
    if missing:
        raise MalformedEventError(
            [f"missing required attribute {a!r} (header ce-{a})" for a in missing]
        )
    decoded = {k: unquote(v) if k.startswith("ce-") and isinstance(v, str) else v
               for k, v in lowered.items()}
    try:
        ce = from_http(decoded, body)
    except ce_errors.GenericException as exc:
        raise MalformedEventError([str(exc)]) from None
    return [_to_event(ce)]


def _json(body: bytes, what: str = "body") -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedEventError([f"{what} is not valid JSON: {exc}"]) from None


def _from_structured_dict(item: Any, index: int | None) -> Event:
    where = "" if index is None else f"event {index}: "
    if not isinstance(item, dict):
        raise MalformedEventError([f"{where}a structured event must be a JSON object"])
    missing = [a for a in REQUIRED if not item.get(a)]
    if missing:
        raise MalformedEventError([f"{where}missing required attribute {a!r}" for a in missing])
    if item.get("specversion") != "1.0":
        raise MalformedEventError([f"{where}specversion must be '1.0', got {item['specversion']!r}"])
    if "data_base64" in item:
        item = _with_binary_data(item, where)
    try:
        ce = from_dict(item)
    except ce_errors.GenericException as exc:
        raise MalformedEventError([f"{where}{exc}"]) from None
    return _to_event(ce)


def _with_binary_data(item: dict[str, Any], where: str) -> dict[str, Any]:
    """The JSON format's ``data_base64`` (what the SDK writes for bytes data), decoded as the
    spec asks of receivers; it and ``data`` are mutually exclusive."""
    if "data" in item:
        raise MalformedEventError([f"{where}an event carries data or data_base64, not both"])
    encoded = item["data_base64"]
    try:
        if not isinstance(encoded, str):
            raise ValueError("not a string")
        raw = base64.b64decode(encoded, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise MalformedEventError([f"{where}data_base64 is not valid base64: {exc}"]) from None
    rest = {k: v for k, v in item.items() if k != "data_base64"}
    return {**rest, "data": raw}


def extension_problems(extensions: Mapping[str, Any],
                       max_name: int = MAX_NAME_LENGTH) -> list[str]:
    """Everything wrong with ``extensions`` (name to value), each named: a name outside the
    spec's lower-case a-z0-9 or longer than ``max_name``, a reserved name, a value that is
    not a string, a number or a boolean, or too long, and too many of them."""
    found = []
    if len(extensions) > MAX_EXTENSIONS:
        found.append(f"{len(extensions)} extension attributes: at most {MAX_EXTENSIONS} are taken")
    for name, value in extensions.items():
        shown = name[:max_name] + ("…" if len(name) > max_name else "")
        if not NAME.fullmatch(name):
            found.append(f"extension attribute {shown!r}: a name must be lower-case letters "
                         "a-z and digits 0-9")
        elif len(name) > max_name:
            found.append(f"extension attribute {shown!r}: a name of at most {max_name} "
                         "characters expected")
        elif name in RESERVED:
            found.append(f"extension attribute {name!r}: a name the CloudEvents spec reserves")
        if isinstance(value, (dict, list, tuple)) or value is None:
            found.append(f"extension attribute {shown!r}: a string, number or boolean "
                         f"expected, got {type(value).__name__}")
        elif len(_text(value)) > MAX_EXTENSION_VALUE:
            found.append(f"extension attribute {shown!r}: a value of at most "
                         f"{MAX_EXTENSION_VALUE} characters expected")
    return found


def _text(value: Any) -> str:
    """An extension's value as its canonical string (CloudEvents' type system: a boolean is
    ``true``/``false``)."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _extensions(attrs: Mapping[str, Any]) -> dict[str, str]:
    """The extension attributes of a received event, every one kept (unknown ones too), as
    strings; bounded (``extension_problems``)."""
    found = {name: value for name, value in attrs.items()
             if name not in RESERVED and value is not None}
    problems = extension_problems(found)
    if problems:
        raise MalformedEventError(problems)
    return {name: _text(value) for name, value in found.items()}


def _to_event(ce: Any) -> Event:
    attrs = ce.get_attributes()
    if attrs.get("specversion") != "1.0":
        raise MalformedEventError([f"specversion must be '1.0', got {attrs.get('specversion')!r}"])
    extensions = _extensions(attrs)
    etype = EventType.parse(str(attrs["type"]))
    data = ce.get_data()
    if isinstance(data, (bytes, str)):
        data = _json(data.encode() if isinstance(data, str) else data, "data")
    if data is not None and not isinstance(data, dict):
        raise MalformedEventError(["data must be a JSON object"])
    return Event(
        type=etype,
        source=str(attrs["source"]),
        id=str(attrs["id"]),
        time=str(attrs.get("time") or ""),
        subject=attrs.get("subject"),
        data=parse_payload(etype, data),
        extensions=extensions,
    )
