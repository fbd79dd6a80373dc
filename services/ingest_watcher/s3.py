"""Datasets kept under an S3 (or MinIO) bucket prefix: notifications, polling, and a mirror.

The prefix is mirrored into a local folder: objects are listed (key, ETag, size), new or
changed ones downloaded (to a temporary name, then renamed), vanished ones removed, and the
listing that was mirrored is remembered so an unchanged object is never downloaded again. The
mirror is then fingerprinted like any folder, so a notification whose content ends up
identical emits nothing.

Bucket notifications (``Records`` in the AWS S3 format, ``eventSource`` ``aws:s3``, and
MinIO's, ``minio:s3``) arrive on ``POST /webhooks/s3``; buckets without notifications are
polled: a listing that differs from the mirrored one triggers the same sync.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote_plus, urlparse

from events.payloads import Origin, SourceObject

log = logging.getLogger(__name__)
SOURCES = {"aws:s3": "s3", "minio:s3": "minio"}
NAMED = 100  # objects an origin names (the first ones; it counts them all)


class UnsafeKeyError(ValueError):
    """An object key that would land outside the mirror (``..`` or an absolute path)."""


class UnmappableKeyError(ValueError):
    """An object key with no file of its own in a folder: ``a//b`` and ``./b`` (a file
    system folds them into another key's path), or a key that is both a file and a folder
    (``a/b`` beside ``a/b/c``). Skipped and reported; every other key goes on working."""


@dataclass(frozen=True)
class BucketSource:
    bucket: str
    prefix: str = ""  # "" or ends with "/"
    endpoint_url: str | None = None  # MinIO, or any S3-compatible server

    @classmethod
    def parse(cls, uri: str, endpoint_url: str | None = None) -> BucketSource:
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"expected s3://BUCKET[/PREFIX], got {uri!r}")
        prefix = parsed.path.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return cls(parsed.netloc, prefix, endpoint_url)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def relative(self, key: str) -> str | None:
        """The key's path inside the mirror; None when it is not under the prefix.
        Raises UnsafeKeyError for keys that would escape it."""
        if not key.startswith(self.prefix):
            return None
        rest = key[len(self.prefix):]
        pure = PurePosixPath(rest)
        if key.startswith("/") or pure.is_absolute() or ".." in pure.parts or not rest:
            raise UnsafeKeyError(f"object key {key!r} is not a safe relative path")
        if str(pure) != rest.removesuffix("/"):
            raise UnmappableKeyError(f"object key {key!r} has no file of its own "
                                     f"(a file system reads it as {str(pure)!r})")
        return str(pure)


class BucketMirror:
    def __init__(self, client: Any, source: BucketSource, folder: Path, settle: float = 1.0) -> None:
        self._s3 = client  # a boto3 S3 client
        self.source = source
        self.folder = folder
        self.settle = settle  # seconds the listing must stay the same before a sync
        self._state = folder.parent / f".{folder.name}.listing.json"
        self._lock = threading.Lock()
        self.skipped: dict[str, str] = {}  # object key -> why it is not mirrored
        self.synced: list[SourceObject] = []  # what the last sync downloaded and removed

    def listing(self) -> dict[str, list[Any]]:
        """{relative path: [etag, size]} of every object under the prefix that maps to a file
        of its own; the others are skipped and reported once each (``skipped``)."""
        out: dict[str, list[Any]] = {}
        pages = self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.source.bucket, Prefix=self.source.prefix)
        for page in pages:
            for item in page.get("Contents", []):
                try:
                    rel = self.source.relative(item["Key"])
                except (UnsafeKeyError, UnmappableKeyError) as exc:
                    self._skip(item["Key"], str(exc))
                    continue
                if rel is not None and not item["Key"].endswith("/"):
                    out[rel] = [item["ETag"].strip('"'), int(item["Size"])]
        folders = {str(parent) for rel in out for parent in PurePosixPath(rel).parents}
        for rel in sorted(folders.intersection(out)):  # a file where others need a folder
            self._skip(self.source.prefix + rel, f"object key {self.source.prefix + rel!r} "
                       "is both a file and a folder of other keys")
            del out[rel]
        return out

    def _skip(self, key: str, why: str) -> None:
        if key not in self.skipped:
            log.warning("%s: skipped; the rest of %s is mirrored", why, self.source.uri)
        self.skipped[key] = why

    def mirrored(self) -> dict[str, list[Any]]:
        try:
            return json.loads(self._state.read_text())  # type: ignore[no-any-return]
        except (FileNotFoundError, ValueError):
            return {}

    def changed(self) -> bool:
        return self.listing() != self.mirrored()

    def settled_listing(self, settle: float, timeout: float = 600.0) -> dict[str, list[Any]]:
        """The listing once it has stayed the same for ``settle`` seconds: an upload of many
        objects (or a slow multipart one) is synced once, complete, not half-way."""
        current = self.listing()
        deadline = time.monotonic() + timeout
        while settle > 0 and time.monotonic() < deadline:
            time.sleep(settle)
            again = self.listing()
            if again == current:
                break
            current = again
        return current

    def sync(self) -> str:
        """Bring the folder to the bucket's settled listing; says what it downloaded and removed."""
        with self._lock:
            listing, before = self.settled_listing(self.settle), self.mirrored()
            self.folder.mkdir(parents=True, exist_ok=True)
            downloaded = removed = 0
            synced: list[SourceObject] = []
            for rel, meta in listing.items():
                target = self.folder / rel
                if before.get(rel) == meta and target.is_file():
                    continue
                synced.append(SourceObject(key=self.source.prefix + rel, etag=meta[0],
                                           size=meta[1]))
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.part"
                try:
                    self._s3.download_file(self.source.bucket, self.source.prefix + rel, str(tmp))
                    os.replace(tmp, target)
                finally:
                    tmp.unlink(missing_ok=True)
                downloaded += 1
            for rel in sorted(set(before) - set(listing)):
                (self.folder / rel).unlink(missing_ok=True)
                synced.append(SourceObject(key=self.source.prefix + rel))
                removed += 1
            self.synced = synced
            tmp_state = self._state.with_suffix(".tmp")
            tmp_state.write_text(json.dumps(listing))
            os.replace(tmp_state, self._state)
            skipped = f", {len(self.skipped)} key(s) skipped" if self.skipped else ""
            return f"{downloaded} downloaded, {removed} removed{skipped}"

    def origin(self, notified: Origin | None) -> Origin:
        """What the event of the sync just done says of its origin: what the notification
        said (``notified``: its keys, ETags and sizes), or, for a sync no notification asked
        for (a poll, the catch-up at start), the objects that sync downloaded (with their
        ETags and sizes) and removed (the key alone)."""
        if notified is not None:
            return notified
        return notified_origin(self.source, self.synced)


def notified_origin(source: BucketSource, objects: list[SourceObject]) -> Origin:
    """A bucket change's origin: the bucket, the first ``NAMED`` objects and how many in all."""
    return Origin(kind="bucket", bucket=source.bucket, objects=tuple(objects[:NAMED]),
                  objects_total=len(objects))


def _notified(s3: dict[str, Any], key: str) -> SourceObject:
    """The object a record names: its key (decoded), and its ETag and size when the record
    gives them (a creation does; a removal names the key alone)."""
    obj = s3["object"]
    etag, size = obj.get("eTag"), obj.get("size")
    return SourceObject(key=key, etag=etag.strip('"')[:128] if isinstance(etag, str) else None,
                        size=size if isinstance(size, int) and not isinstance(size, bool)
                        and size >= 0 else None)


def relevant_records(body: Any, source: BucketSource) -> tuple[str, list[SourceObject]]:
    """Validate a notification body; returns (trigger, the objects under the prefix it names,
    with their ETags and sizes). Raises ValueError naming what is wrong (the caller answers
    400)."""
    if not isinstance(body, dict) or not isinstance(body.get("Records"), list):
        raise ValueError('a bucket notification is a JSON object with a "Records" list')
    trigger, objects = "s3", []
    for n, record in enumerate(body["Records"]):
        where = f"Records[{n}]"
        if not isinstance(record, dict):
            raise ValueError(f"{where} is not an object")
        origin = record.get("eventSource")
        if not isinstance(origin, str) or origin not in SOURCES:
            raise ValueError(f"{where}.eventSource is {origin!r}, expected aws:s3 or minio:s3")
        trigger = SOURCES[origin]
        s3 = record.get("s3")
        try:
            bucket = s3["bucket"]["name"]
            raw_key = s3["object"]["key"]
        except (TypeError, KeyError):
            raise ValueError(f"{where} lacks s3.bucket.name or s3.object.key") from None
        if not isinstance(bucket, str) or not isinstance(raw_key, str):
            raise ValueError(f"{where}: bucket name and object key must be strings")
        key = unquote_plus(raw_key)  # notifications carry URL-encoded keys
        if bucket != source.bucket:
            continue
        try:
            rel = source.relative(key)
        except UnsafeKeyError as exc:
            raise ValueError(f"{where}: {exc}") from None
        except UnmappableKeyError as exc:  # the mirror skips it too; the rest goes on
            log.warning("%s: %s; not mirrored", where, exc)
            continue
        if rel is not None:
            objects.append(_notified(s3, key))
    return trigger, objects


class Poller:
    """For buckets without notifications: compare the listing every ``interval`` seconds and
    ask for a sync when it moved."""

    def __init__(self, mirror: BucketMirror, request_sync: Any, interval: float) -> None:
        self._mirror = mirror
        self._request = request_sync
        self._interval = interval

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self._interval):
            try:
                if self._mirror.changed():
                    self._request()
            except Exception as exc:  # the bucket may be unreachable for a while
                log.warning("polling %s failed: %s", self._mirror.source.uri, exc)
