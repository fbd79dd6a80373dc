"""The fetcher behind the Git and bucket sources, through a real outbox on real Redis: a
failed sync is retried until it succeeds (the notification is not lost), and a storm of
notifications costs few syncs."""

import shutil
import time

import pytest

from events import make_event
from events.outbox import Outbox
from events.sinks import RedisStreamSink, read_stream
from services.ingest_watcher.fetch import SourceFetcher
from services.ingest_watcher.watcher import DirectoryWatcher
from tests.conftest import wait_for, write_dataset

pytestmark = pytest.mark.integration


def _notification():
    return make_event("dataset.updated", {"uri": "remote", "trigger": "github"}, source="test")


def test_a_failed_sync_is_retried_and_its_change_still_arrives(r, tmp_path):
    remote = write_dataset(tmp_path / "remote", train=40, test=10)
    local = tmp_path / "local"
    attempts = []

    def sync():  # the remote is unreachable at first, then the copy works
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise OSError("remote unreachable")
        shutil.copytree(remote, local, dirs_exist_ok=True)
        return "copied"

    watcher = DirectoryWatcher(local, RedisStreamSink(r), r, tmp_path / "state")
    jobs = Outbox(r, SourceFetcher(sync, watcher, min_interval=0.05), "fetch-retry",
                  first_backoff=0.05).start()
    try:
        jobs.put(_notification())
        wait_for(lambda: jobs.pending() == 0)  # acknowledged once the sync and its event are done
        assert len(attempts) == 2
        [event] = read_stream(r)
        assert event["data"]["trigger"] == "github" and len(event["data"]["files"]["added"]) == 4
    finally:
        jobs.stop()


def test_a_storm_of_notifications_costs_few_syncs(r, tmp_path):
    remote = write_dataset(tmp_path / "remote", train=40, test=10)
    local = tmp_path / "local"
    syncs = []

    def sync():
        syncs.append(time.monotonic())
        shutil.copytree(remote, local, dirs_exist_ok=True)
        return "copied"

    watcher = DirectoryWatcher(local, RedisStreamSink(r), r, tmp_path / "state")
    jobs = Outbox(r, SourceFetcher(sync, watcher, min_interval=0.3), "fetch-storm").start()
    try:
        for _ in range(200):
            jobs.put(_notification())
        wait_for(lambda: jobs.pending() == 0)
        assert len(syncs) <= 3  # the first, and one covering everything queued meanwhile
        assert len(read_stream(r)) == 1
    finally:
        jobs.stop()
