"""The timeline: what happened, in order, read from the start or from the newest end."""

import pytest

from core import timeline

pytestmark = pytest.mark.integration


def _fill(r):
    for n in range(6):
        timeline.record(r, "event" if n % 2 else "step", f"s{n}", n=n)


def test_the_timeline_reads_oldest_first_from_a_time(r):
    _fill(r)
    entries = timeline.read(r)
    assert [e.step for e in entries] == [f"s{n}" for n in range(6)]
    assert entries[3].kind == "event" and entries[3].detail == {"n": 3}
    assert [e.step for e in timeline.read(r, since=entries[4].at)] == ["s4", "s5"]


def test_the_newest_entries_come_newest_first_of_one_kind_if_asked(r):
    _fill(r)
    assert [e.step for e in timeline.recent(r, 2)] == ["s5", "s4"]
    assert [e.step for e in timeline.recent(r, 2, kind="event")] == ["s5", "s3"]
    assert [e.step for e in timeline.recent(r, 10, kind="step")] == ["s4", "s2", "s0"]
    assert timeline.recent(r, 10, kind="nothing") == []
