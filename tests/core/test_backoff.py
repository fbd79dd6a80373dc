"""The one retry-with-backoff helper: its delays, its reset, its jitter and its stop; and that
each loop built on it keeps the delays it had (an outage's 0.1 s doubling to 5 s)."""

import logging
import random
import threading
import time

import pytest

from core.backoff import Backoff
from core.supervise import Outage


def test_the_delays_double_from_the_first_up_to_the_cap_and_start_again_after_a_reset():
    backoff = Backoff(0.2, 5.0)
    assert [backoff.next() for _ in range(7)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert backoff.failures == 7
    backoff.reset()
    assert backoff.failures == 0 and [backoff.next() for _ in range(2)] == [0.2, 0.4]


def test_another_factor_grows_the_delays_by_it():
    backoff = Backoff(1.0, 20.0, factor=3.0)
    assert [backoff.next() for _ in range(4)] == [1.0, 3.0, 9.0, 20.0]


def test_jitter_draws_each_delay_below_the_plain_one_and_the_plain_one_still_doubles():
    plain = Backoff(0.5, 8.0)
    jittered = Backoff(0.5, 8.0, jitter=0.5, rng=random.Random(7))
    pairs = [(plain.next(), jittered.next()) for _ in range(8)]
    assert all(delay / 2 <= drawn <= delay for delay, drawn in pairs), pairs
    assert len({round(drawn / delay, 6) for delay, drawn in pairs}) > 1  # drawn, not scaled
    assert Backoff(0.5, 8.0, jitter=0.5, rng=random.Random(7)).next() == pairs[0][1]


def test_waits_go_to_the_injected_sleep_when_there_is_no_stop_event():
    naps = []
    backoff = Backoff(0.5, 15.0, sleep=naps.append)
    assert [backoff.wait() for _ in range(3)] == [False, False, False]
    assert naps == [0.5, 1.0, 2.0]


def test_a_wait_ends_as_soon_as_it_is_asked_to_stop():
    stop = threading.Event()
    backoff = Backoff(60.0, 60.0, stop=stop)
    threading.Timer(0.05, stop.set).start()
    started = time.monotonic()
    assert backoff.wait() is True  # stopped, not slept out
    assert time.monotonic() - started < 5
    started = time.monotonic()
    assert backoff.wait() is True and time.monotonic() - started < 0.5  # and stays stopped


@pytest.mark.parametrize("first, cap, factor, jitter, problem", [
    (0, 1, 2, 0, "first wait 0 must be above 0"),
    (2, 1, 2, 0, "cap 1 must be at least the first wait 2"),
    (1, 2, 0.5, 0, "factor 0.5 must be at least 1"),
    (1, 2, 2, 1, "jitter 1 must be from 0 to below 1"),
])
def test_waits_that_make_no_sense_are_refused_with_what_is_wrong(first, cap, factor, jitter,
                                                                 problem):
    with pytest.raises(ValueError, match=problem):
        Backoff(first, cap, factor=factor, jitter=jitter)


def test_an_outage_waits_from_a_tenth_of_a_second_doubling_to_its_cap_and_logs_each_way_once(
        caplog):
    caplog.set_level(logging.WARNING)
    outage = Outage("Redis (test)")
    waits = [outage.failed(ConnectionError("refused")) for _ in range(8)]
    assert waits == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    outage.ok()
    outage.ok()
    assert outage.failed(ConnectionError("refused")) == 0.1  # a new outage starts over
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["Redis (test) is unavailable (refused); retrying with backoff",
                     "Redis (test) is back",
                     "Redis (test) is unavailable (refused); retrying with backoff"]
