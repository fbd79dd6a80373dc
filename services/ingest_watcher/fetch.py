"""The sink of a remote source's job outbox (a Git repository, a bucket prefix): each
notification becomes a sync of the local copy and a fingerprint of it, so an event is
emitted only if the content changed.

Syncs coalesce: a notification sent before the last *successful* sync started is covered by
it, and syncs start at most every ``min_interval`` seconds, so a storm of pushes or bucket
events costs one sync per interval. A failed sync raises, the outbox retries the same
notification later, and it is not covered until a sync has succeeded.

The event emitted carries the change's ``origin``: what the notification said, completed by
the source after its sync (``origin``: the commit a clone checked out, the objects a poll's
sync downloaded).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from events import Event
from events.payloads import DatasetUpdated, Origin
from services.ingest_watcher.watcher import DirectoryWatcher

log = logging.getLogger(__name__)


class SourceFetcher:
    def __init__(self, sync: Callable[[], str], watcher: DirectoryWatcher,
                 min_interval: float = 1.0,
                 origin: Callable[[Origin | None], Origin | None] | None = None) -> None:
        self._sync = sync  # brings the local copy up to date; returns what it did, for the log
        self._origin = origin  # after a sync: the notification's origin, completed
        self._watcher = watcher
        self._min_interval = min_interval
        self._last_attempt: float | None = None  # monotonic
        self._synced_from: datetime | None = None  # when the last successful sync started

    def send(self, notification: Event) -> None:
        sent = _sent(notification)
        if self._synced_from is not None and sent is not None and sent < self._synced_from:
            return  # that sync already saw what this notification announces
        if self._last_attempt is not None:
            wait = self._min_interval - (time.monotonic() - self._last_attempt)
            if wait > 0:
                time.sleep(wait)
        self._last_attempt = time.monotonic()
        started = datetime.now(UTC)
        done = self._sync()  # raising leaves the notification in the outbox: retried
        self._synced_from = started
        data = notification.data
        assert isinstance(data, DatasetUpdated)
        origin = self._origin(data.origin) if self._origin else data.origin
        emitted = self._watcher.scan_once(settled=True, trigger=data.trigger, origin=origin)
        log.info("%s notification %s: %s, %s", data.trigger, notification.id, done,
                 f"dataset.updated {emitted.id}" if emitted else "content unchanged")


def _sent(notification: Event) -> datetime | None:
    try:
        sent = datetime.fromisoformat(str(notification.time))
    except ValueError:
        return None
    return sent if sent.tzinfo is not None else sent.replace(tzinfo=UTC)
