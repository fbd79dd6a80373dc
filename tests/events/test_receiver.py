"""Who sent an event, as ``POST /events`` authenticated it: a dispatch given as ``FromSender``
is told the identity of the key that authenticated the request (never the key, never what the
event says of itself); an ordinary dispatch is called as always."""

import pytest
from fastapi.testclient import TestClient

from core.auth import ANONYMOUS, identity
from events import make_event
from events.codec import encode
from events.dedup import Deduplicator
from events.receiver import FromSender, create_receiver

pytestmark = pytest.mark.integration
KEYS = ("first-key-0123456789abcdef", "second-key-fedcba9876543210")


def _post(client, event, key=None):
    headers, body = encode(event, "structured")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return client.post("/events", content=body, headers=headers)


def _approval(n):
    return make_event("training.requested", {"uri": "/d", "approves": "run-b",
                                             "approved_by": "the boss"},
                      source="retrain/approve", id=f"approve/run-b/{n}")


def test_a_sender_aware_dispatch_is_told_which_key_sent_each_event(r):
    told = []
    client = TestClient(create_receiver(Deduplicator(r, 60, "senders"),
                                        FromSender(lambda e, sender: told.append((e.id, sender))),
                                        KEYS))
    assert _post(client, _approval(1), KEYS[0]).status_code == 202
    assert _post(client, _approval(2), KEYS[1]).status_code == 202
    assert told == [("approve/run-b/1", identity(KEYS[0])), ("approve/run-b/2", identity(KEYS[1]))]
    assert identity(KEYS[0]) != identity(KEYS[1])
    assert all(sender.startswith("key:") and len(sender) == len("key:") + 12
               for _, sender in told)
    assert not any(key[:8] in sender for key in KEYS for _, sender in told)  # never the key


def test_an_open_receiver_tells_that_no_key_vouched_for_the_sender(r):
    told = []
    client = TestClient(create_receiver(Deduplicator(r, 60, "open"),
                                        FromSender(lambda e, sender: told.append(sender))))
    assert _post(client, _approval(3)).status_code == 202
    assert told == [ANONYMOUS]


def test_an_ordinary_dispatch_gets_the_event_alone(r):
    received = []
    client = TestClient(create_receiver(Deduplicator(r, 60, "plain"), received.append, KEYS))
    assert _post(client, _approval(4), KEYS[0]).status_code == 202
    assert [e.id for e in received] == ["approve/run-b/4"]
