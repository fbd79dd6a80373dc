"""The folder watcher: one ``dataset.updated`` per settled change of a dataset root.

File-system notifications (inotify, through watchdog) wake the watcher at once; writes are
debounced: the scan waits until no notification has arrived for ``settle`` seconds, so a slow
copy or 500 files dropped at once yield one event. A periodic rescan (cheap thanks to the stat
cache) catches whatever notifications missed, and then a change is emitted only after the
folder has settled by itself (the same digest on two scans and no write for ``settle``
seconds). The last emitted fingerprint is kept in Redis, so a restarted watcher catches up on
what changed while it was down and emits nothing for what did not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path

import redis

from core.supervise import Outage
from dataset.fingerprint import FileEntry, Fingerprint, StatCache, diff, fingerprint
from events import Event, EventType, make_event
from events.payloads import DatasetUpdated, FileChanges, Origin
from events.sinks import Sink

log = logging.getLogger(__name__)
STOP_CHECK = 0.2  # seconds between looks at the stop signal while waiting for the next rescan


SUMMARY = ":summary"  # beside each source's state: its root, last digest and changes sent
SOURCES = "retrain:watcher:sources"  # the summaries' keys, for dashboards


class DirectoryWatcher:
    def __init__(
        self,
        root: Path,
        sink: Sink,
        client: redis.Redis,
        state_dir: Path,
        *,
        dataset: str = "fashion-mnist",
        interval: float = 0.5,
        settle: float = 1.0,
    ) -> None:
        self.root = root.resolve()
        self._sink = sink
        self._r = client
        self._dataset = dataset
        self._interval = interval
        self._settle = settle
        root_id = hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
        self._state_key = f"retrain:watcher:{dataset}:{root_id}"
        self._cache = StatCache(state_dir / f"statcache-{root_id}.bin")
        self._previous_scan: str | None = None
        self._wake = threading.Event()
        self.emitted = 0
        self.scans = 0
        self.last_scan: float | None = None  # wall time of the last completed scan
        self._last_notice: float | None = None  # monotonic time of the latest notification
        self.notifications = False  # whether file-system notifications are running
        self._observer: object | None = None
        self._awaiting = False  # the root is not there yet: said once, looked for each interval
        self._unobservable = False  # notifications failed on an existing root: rescans only

    def _last(self) -> tuple[Fingerprint | None, int]:
        """The fingerprint last emitted, and how many changes were emitted so far."""
        raw = self._r.get(self._state_key)
        if not raw:
            return None, 0
        state = json.loads(raw)
        return (Fingerprint(state["digest"], tuple(FileEntry(*f) for f in state["files"])),
                int(state.get("sequence", 0)))

    def scan_once(self, settled: bool = False, trigger: str = "watcher",
                  origin: Origin | None = None) -> Event | None:
        """Fingerprint the root; emit and return an event if it changed and has settled.
        ``settled``: the caller knows the writes are complete (a git checkout returned).
        ``origin``: what the change's source said (a push, a bucket notification); by default
        the folder itself."""
        if not self.root.is_dir():
            return None
        fp = fingerprint(self.root, self._cache, keep_contents=False)  # digests compared only
        self.scans += 1
        self.last_scan = time.time()
        stable = fp.digest == self._previous_scan
        self._previous_scan = fp.digest
        last, emitted = self._last()
        if last is not None and last.digest == fp.digest:
            return None
        if not fp.files or (not settled and (not stable or not self._quiet())):
            return None
        changes = diff(last, fp)
        # the id names this change, not the content: data that returns to earlier content
        # (A -> B -> A, a rollback) is a new change with its own event, while a retry of
        # this one (a crash before the state below moved on) keeps the id and is a duplicate
        sequence = emitted + 1
        event = make_event(
            EventType.DATASET_UPDATED,
            DatasetUpdated(
                dataset=self._dataset, uri=str(self.root), digest=fp.digest,
                previous_digest=last.digest if last else None,
                files=FileChanges(added=changes.added, changed=changes.changed,
                                  removed=changes.removed),
                trigger=trigger,  # type: ignore[arg-type]
                origin=origin or Origin(kind="folder", folder=str(self.root)),
            ),
            source=f"retrain/watcher/{self._dataset}",
            id=f"{self._dataset}@{sequence}:{fp.digest[:16]}",
        )
        self._sink.send(event)  # acknowledged before the state moves on: at-least-once
        with self._r.pipeline(transaction=True) as pipe:  # the summary: what a dashboard reads
            pipe.set(self._state_key, json.dumps(
                {"digest": fp.digest, "files": [[f.path, f.size, f.hash] for f in fp.files],
                 "sequence": sequence}))
            pipe.sadd(SOURCES, self._state_key + SUMMARY)
            pipe.set(self._state_key + SUMMARY, json.dumps(
                {"uri": str(self.root), "digest": fp.digest, "sequence": sequence,
                 "files": len(fp.files), "at": round(time.time(), 3)}))
            pipe.execute()
        self.emitted += 1
        log.info("dataset %s changed (%d added, %d changed, %d removed): digest %s",
                 self._dataset, len(changes.added), len(changes.changed), len(changes.removed),
                 fp.digest[:12])
        return event

    def _quiet(self) -> bool:
        """No file under the root was modified within the settle window."""
        newest = 0.0
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                try:
                    newest = max(newest, os.stat(os.path.join(dirpath, name)).st_mtime)
                except FileNotFoundError:
                    continue
        return time.time() - newest >= self._settle

    def rescan(self) -> None:
        """Scan now instead of at the next interval (a webhook or a calendar asked)."""
        self._wake.set()

    def notice(self) -> None:
        """A file-system notification: something under the root is being written."""
        self._last_notice = time.monotonic()
        self._wake.set()

    def _observe(self) -> object | None:
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:  # pragma: no cover - watchdog is a dependency
            return None
        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: object) -> None:
                if getattr(event, "event_type", "") not in ("opened", "closed_no_write"):
                    watcher.notice()

        try:
            observer = Observer()
            observer.schedule(Handler(), str(self.root), recursive=True)
            observer.start()
        except OSError as exc:  # e.g. the inotify watch limit: the rescan still works
            if not self.root.is_dir():  # gone again since it was seen: waited for anew
                return None
            log.warning("no file-system notifications for %s (%s); rescanning every %.1fs",
                        self.root, exc, self._interval)
            self._unobservable = True
            return None
        self.notifications = True
        return observer

    def _follow_root(self) -> None:
        """Start file-system notifications once the root exists; until then say, once, that
        the watcher waits for it (a fresh install whose volume is filled later)."""
        if self._observer is not None or self._unobservable:
            return
        if not self.root.is_dir():
            if not self._awaiting:
                log.info("%s does not exist yet: waiting for it to appear (looking every %.1fs; "
                         "not ready until then)", self.root, self._interval)
                self._awaiting = True
            return
        if self._awaiting:
            log.info("%s appeared: watching it", self.root)
            self._awaiting = False
        self._observer = self._observe()

    def _pause(self, seconds: float, stop: threading.Event) -> None:
        """Wait until the next rescan: ``seconds``, or less when a notification arrives or
        ``stop`` is set (checked every ``STOP_CHECK`` seconds, so a stop never waits out a
        long interval)."""
        deadline = time.monotonic() + seconds
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or self._wake.wait(min(left, STOP_CHECK)):
                break
        self._wake.clear()  # a notification after this wakes the next pause at once

    def run(self, stop: threading.Event) -> None:
        outage = Outage(f"Redis (the watcher of {self.root})")
        try:
            while not stop.is_set():
                self._follow_root()
                notice = self._last_notice
                if notice is not None:
                    quiet_for = time.monotonic() - notice
                    if quiet_for < self._settle:  # debounce: wait for the writes to settle
                        if stop.wait(self._settle - quiet_for):
                            return
                        continue
                wait = self._interval
                try:
                    # settled by the notifications: no write for `settle` seconds
                    self.scan_once(settled=notice is not None)
                    outage.ok()
                except redis.RedisError as exc:  # Redis away: logged once, not every scan
                    wait = max(wait, outage.failed(exc))
                except Exception:  # keep watching; the next scan retries
                    log.exception("watcher scan of %s failed", self.root)
                else:
                    if self._last_notice == notice:
                        self._last_notice = None
                self._pause(wait, stop)
        finally:
            if self._observer is not None:
                self._observer.stop()  # type: ignore[attr-defined]
                self._observer.join(timeout=5)  # type: ignore[attr-defined]
                self._observer = None
                self.notifications = False


def watched_sources(client: redis.Redis) -> list[dict[str, object]]:
    """What each watcher last sent (for dashboards): its root (``uri``), the ``digest``, the
    changes sent so far (``sequence``), ``files`` and when (``at``); two round trips."""
    keys = sorted(k.decode() for k in client.smembers(SOURCES))
    return [json.loads(raw) for raw in (client.mget(keys) if keys else []) if raw]
