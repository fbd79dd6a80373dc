import pytest

from events import make_event
from events.dedup import Deduplicator

pytestmark = pytest.mark.integration


def test_same_source_and_id_pass_once(r):
    dedup = Deduplicator(r, ttl_seconds=60)
    event = make_event("dataset.updated", {"uri": "/d"}, source="s", id="same")
    again = make_event("dataset.updated", {"uri": "/d"}, source="s", id="same")
    other_source = make_event("dataset.updated", {"uri": "/d"}, source="t", id="same")
    assert dedup.first_time(event) is True
    assert dedup.first_time(again) is False
    assert dedup.first_time(other_source) is True


def test_memory_survives_a_new_deduplicator(r):
    event = make_event("dataset.updated", {"uri": "/d"}, source="s", id="x")
    assert Deduplicator(r, 60).first_time(event)
    assert not Deduplicator(r, 60).first_time(event)  # as after a restart
