"""The fetch step: a Git push or a bucket notification that Argo Events received, brought
onto the shared volume, each revision in a folder of its own.

A Sensor fed by Argo Events' ``github``, ``gitlab``, ``minio`` or ``sqs`` EventSource hands
the workflow a *fetch spec* (JSON): for a push the repository, the pushed commit, its ref,
the dataset path inside the repository and the delivery id; for a bucket the bucket, the
watched prefix, the notification's records and its id. ``parse_spec`` checks it (every
problem named, nothing fetched); ``fetch`` brings exactly that commit (or the prefix as the
bucket holds it now) to

- ``$RETRAIN_HOME/git/<repository key>/<commit>`` (the dataset at ``<path>`` inside), or
- ``$RETRAIN_HOME/s3/<prefix key>/<revision>/data`` (``revision``: a digest of the listing
  mirrored, every key with its ETag and size),

beside the watcher's own clone and mirror under the same roots. Each is written in a hidden
``.part`` folder and renamed into place, so two deliveries at once never write one folder
(the second rename loses and its copy is dropped), a killed fetch leaves nothing in place,
and a redelivery finds the folder there and fetches nothing. The Git and bucket work is the
watcher's own (``services.ingest_watcher.git.Clone``, ``services.ingest_watcher.s3``).

The result is the folder's data URI and the ``dataset.updated`` the watcher would send for
it (its id the delivery's, its origin the commit or the objects), which the plan step checks
as ``POST /events`` would.

A source that cannot be reached (GitHub, GitLab or the bucket answering with a network
error, a 5xx or a throttle) is tried again here with a bounded backoff (``RETRY_ATTEMPTS``);
when every attempt failed the step exits ``FetchUnavailable.exit_code`` (75, EX_TEMPFAIL),
which the template's retry strategy retries again later, while a bad spec (2) and a revision
that is not there (1) stay final: the Workflow is named from the delivery, so a lost fetch
would lose the push (a redelivery creates nothing).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from core.backoff import Backoff
from core.redact import redact
from events import Event, make_event
from events.payloads import Origin, SourceObject
from services.ingest_watcher.git import Clone, GitError, GitSource, push_origin
from services.ingest_watcher.s3 import BucketMirror, BucketSource, notified_origin, relevant_records
from workflows.errors import WorkflowError

log = logging.getLogger(__name__)
SOURCE = "retrain/fetch/"  # + provider: the source of the events this step makes
PROVIDERS = {"git": ("github", "gitlab"), "s3": ("s3", "minio")}
FIELDS = {"git": {"kind", "provider", "repository", "commit", "ref", "path", "delivery", "pusher"},
          "s3": {"kind", "provider", "bucket", "prefix", "notification", "delivery"}}
COMMIT = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")  # SHA-1 or SHA-256
BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
URL = re.compile(r"(https?|ssh|git|file)://\S+|[\w.-]+@[\w.-]+:\S+")
MAX_DELIVERY = 200
RETRY_ATTEMPTS = 5  # waiting 2, 4, 8 and 16 s between them (``core.backoff``): ~30 s
# S3 answers that say "later": throttled or the service's own failure (a 5xx)
S3_TRANSIENT = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                "RequestTimeTooSkewed", "InternalError", "ServiceUnavailable"}
STALE_PART_SECONDS = 24 * 3600  # a killed fetch's .part folder is removed after this


class FetchSpecError(WorkflowError):
    """The fetch spec is not one this step takes; ``problems`` names each reason."""

    exit_code = 2

    def __init__(self, problems: list[str]) -> None:
        super().__init__("bad fetch spec: " + "; ".join(problems))
        self.problems = tuple(problems)


class FetchError(WorkflowError):
    """The spec was fine but its revision could not be brought here (it is not there: final)."""

    exit_code = 1


class FetchUnavailable(FetchError):
    """The source could not be reached in any attempt: the step may succeed later (the
    WorkflowTemplate retries this exit code, and no other failure of the fetch)."""

    exit_code = 75  # EX_TEMPFAIL


class _Unreachable(Exception):
    """One attempt could not reach the source (tried again, then ``FetchUnavailable``)."""


@dataclass(frozen=True)
class GitFetch:
    provider: str  # github or gitlab
    repository: str  # what `git fetch` takes
    commit: str
    ref: str  # refs/heads/<branch>
    path: str  # the dataset folder inside the repository
    delivery: str
    pusher: str | None = None


@dataclass(frozen=True)
class BucketFetch:
    provider: str  # s3 or minio
    bucket: str
    prefix: str  # "" or ends with "/"
    objects: tuple[SourceObject, ...]  # what the notification named under the prefix
    delivery: str


@dataclass(frozen=True)
class Fetched:
    data_uri: str
    event: Event
    fetched: bool  # False: the folder was there already (a redelivery)


def parse_spec(text: str, repositories: tuple[str, ...] = ()) -> GitFetch | BucketFetch | None:
    """The spec a Sensor built (None for "": nothing to fetch); FetchSpecError names every
    problem. ``repositories``: the only ones a spec may name (empty: any)."""
    if not text.strip():
        return None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FetchSpecError([f"not JSON: {exc}"]) from None
    if not isinstance(raw, dict):
        raise FetchSpecError([f"must be a JSON object, got {type(raw).__name__}"])
    kind = raw.get("kind")
    if kind not in PROVIDERS:
        raise FetchSpecError([f"kind is {kind!r}, expected 'git' or 's3'"])
    problems = [f"unknown field {k!r}" for k in sorted(set(raw) - FIELDS[kind])]
    if raw.get("provider") not in PROVIDERS[kind]:
        problems.append(f"provider is {raw.get('provider')!r}, expected one of "
                        f"{', '.join(PROVIDERS[kind])}")
    delivery = raw.get("delivery")
    if not isinstance(delivery, str) or not delivery.strip() or len(delivery) > MAX_DELIVERY:
        problems.append(f"delivery must be the delivery's id (1-{MAX_DELIVERY} characters), "
                        f"got {delivery!r}")
    spec, found = (_git_spec if kind == "git" else _bucket_spec)(raw)
    if isinstance(spec, GitFetch) and repositories and spec.repository not in repositories:
        found.append(f"repository {redact(spec.repository)!r} is not one this workflow fetches "
                     f"(RETRAIN_FETCH_REPOSITORIES)")
    if problems or found:
        raise FetchSpecError(problems + found)
    return spec


def _git_spec(raw: dict[str, Any]) -> tuple[GitFetch | None, list[str]]:
    problems = []
    repository, commit, ref = raw.get("repository"), raw.get("commit"), raw.get("ref")
    path, pusher = raw.get("path", "."), raw.get("pusher")
    if not isinstance(repository, str) or not URL.fullmatch(repository):
        problems.append(f"repository must be a clone URL (https://, ssh://, file://, "
                        f"user@host:path), got {redact(str(repository))!r}")
    if not isinstance(commit, str) or not COMMIT.fullmatch(commit):
        problems.append(f"commit must be a full hexadecimal commit id, got {commit!r}")
    if not isinstance(ref, str) or not ref.startswith("refs/heads/") or len(ref) <= 11:
        problems.append(f"ref must be a branch (refs/heads/...), got {ref!r}")
    pure = PurePosixPath(path) if isinstance(path, str) and path else None
    if pure is None or pure.is_absolute() or ".." in pure.parts:
        problems.append(f"path must be a relative folder inside the repository, got {path!r}")
    if pusher is not None and not isinstance(pusher, str):
        problems.append(f"pusher must be a name, got {pusher!r}")
    if problems:
        return None, problems
    return GitFetch(raw.get("provider", ""), repository, commit, ref, str(pure),
                    str(raw.get("delivery")), pusher or None), []


def _bucket_spec(raw: dict[str, Any]) -> tuple[BucketFetch | None, list[str]]:
    bucket, prefix = raw.get("bucket"), raw.get("prefix", "")
    problems = []
    if not isinstance(bucket, str) or not BUCKET.fullmatch(bucket):
        problems.append(f"bucket must be a bucket name, got {bucket!r}")
    if not isinstance(prefix, str) or prefix.startswith("/") or ".." in prefix.split("/"):
        problems.append(f"prefix must be a key prefix inside the bucket, got {prefix!r}")
    if problems:
        return None, problems
    assert isinstance(bucket, str) and isinstance(prefix, str)
    source = BucketSource.parse(f"s3://{bucket}/{prefix}")
    objects: list[SourceObject] = []
    if raw.get("notification") is not None:
        try:
            _, objects = relevant_records(raw["notification"], source)
        except ValueError as exc:
            return None, [f"notification: {exc}"]
    return BucketFetch(raw.get("provider", ""), bucket, source.prefix, tuple(objects),
                       str(raw.get("delivery"))), []


def tag(text: str) -> str:
    """The folder key of a repository or a bucket prefix (as the watcher keys its copies)."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def fetch(spec: GitFetch | BucketFetch, home: Path, *, git_token: str | None = None,
          s3_client: Callable[[], Any] | None = None, settle: float = 0.0,
          attempts: int = RETRY_ATTEMPTS, backoff: Backoff | None = None) -> Fetched:
    """Bring the spec's revision under ``home`` (unless it is there) and say what it is.
    ``s3_client`` makes the boto3 client a bucket is read with (one per attempt); a bucket's
    listing must stay the same ``settle`` seconds first (the notifications of one upload of
    several objects then mostly fetch one revision). An attempt that cannot reach the source
    is made again, ``attempts`` in all, waiting as ``backoff`` says, then FetchUnavailable."""
    backoff = backoff or Backoff(2.0, 16.0)
    if isinstance(spec, GitFetch):
        where = redact(spec.repository)
        return _retried(lambda: _fetch_git(spec, home, git_token), where, backoff, attempts)
    if s3_client is None:
        raise FetchError("no S3 client to read the bucket with")
    make = s3_client
    return _retried(lambda: _s3_attempt(spec, home, make, settle),
                    f"s3://{spec.bucket}/{spec.prefix}", backoff, attempts)


def _retried(attempt: Callable[[], Fetched], where: str, backoff: Backoff,
             attempts: int) -> Fetched:
    """``attempt()``, made again after each wait while the source cannot be reached."""
    for number in range(1, attempts + 1):
        try:
            return attempt()
        except _Unreachable as exc:
            if number == attempts:
                raise FetchUnavailable(f"{where} could not be reached in {number} attempts: "
                                       f"{exc}") from None
            delay = backoff.next()
            log.warning("%s could not be reached (attempt %d of %d): %s; trying again in %g s",
                        where, number, attempts, exc, delay)
            backoff.pause(delay)
    raise AssertionError("unreachable")  # the loop returns or raises


def _s3_attempt(spec: BucketFetch, home: Path, make: Callable[[], Any], settle: float) -> Fetched:
    """One attempt at the bucket: a network error, a 5xx or a throttle is ``_Unreachable``;
    any other answer (no such bucket, access denied) is final."""
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    try:
        return _fetch_bucket(spec, home, make(), settle)
    except (ConnectionError, HTTPClientError) as exc:
        raise _Unreachable(str(exc)) from None
    except ClientError as exc:
        error, status = exc.response.get("Error", {}), exc.response.get(
            "ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if error.get("Code") in S3_TRANSIENT or int(status or 0) >= 500:
            raise _Unreachable(str(exc)) from None
        raise FetchError(f"s3://{spec.bucket}/{spec.prefix}: {exc}") from None


class _CommitClone(Clone):
    """The watcher's clone (its git, credentials and masking), brought to one exact commit."""

    def checkout(self, commit: str, ref: str) -> None:
        self.folder.mkdir(parents=True)
        self._git("init", "-q", cwd=self.folder)
        try:  # GitHub, GitLab and git itself (protocol v2) serve a reachable commit by id
            self._git("fetch", "-q", "--depth", "1", self.source.url, commit, cwd=self.folder)
        except GitError:  # a server that serves only its refs: the branch's recent history
            try:
                self._git("fetch", "-q", "--depth", "100", self.source.url, ref, cwd=self.folder)
            except GitError as exc:  # neither: the server, or the way to it, is failing
                raise _Unreachable(str(exc)) from None
        try:
            self._git("checkout", "-q", "--force", "--detach", commit, cwd=self.folder)
        except GitError:
            raise FetchError(f"commit {commit} is not in {redact(self.source.url)} "
                             f"(on {ref}): force-pushed away?") from None
        self.commit = self._git("rev-parse", "HEAD", cwd=self.folder)


def _fetch_git(spec: GitFetch, home: Path, token: str | None) -> Fetched:
    root = home / "git" / tag(spec.repository)
    final = root / spec.commit
    fetched = not final.is_dir()
    if fetched:
        _sweep(root)
        part = _part(root, spec.commit)
        with _discarded_on_failure(part):
            _checkout(spec, part, token)
        fetched = _place(part, final)
    data = final / spec.path
    push = ({"ref": spec.ref, "checkout_sha": spec.commit, "user_username": spec.pusher}
            if spec.provider == "gitlab" else
            {"ref": spec.ref, "after": spec.commit, "pusher": {"name": spec.pusher}})
    origin = push_origin(spec.provider, push, GitSource(spec.repository, "main", spec.path),
                         spec.delivery)
    return _result(spec.provider, spec.delivery, data, origin, fetched)


def _checkout(spec: GitFetch, part: Path, token: str | None) -> None:
    """The commit's tree in ``part`` (its history dropped: a snapshot of one commit)."""
    source = GitSource(spec.repository, spec.ref.removeprefix("refs/heads/"), spec.path)
    clone = _CommitClone(source, part, token)
    try:
        clone.checkout(spec.commit, spec.ref)
    except GitError as exc:
        raise FetchError(str(exc)) from None
    shutil.rmtree(part / ".git")
    if not clone.dataset_root.is_dir():
        raise FetchError(f"commit {spec.commit[:12]} of {redact(spec.repository)} has no "
                         f"folder {spec.path}")


def _fetch_bucket(spec: BucketFetch, home: Path, client: Any, settle: float) -> Fetched:
    source = BucketSource(spec.bucket, spec.prefix)
    root = home / "s3" / tag(source.uri)
    part = _part(root, "listing")
    mirror = BucketMirror(client, source, part / "data", settle=0.0)
    listing = mirror.settled_listing(settle)
    if not listing:
        raise FetchError(f"{source.uri} holds no objects to fetch")
    final = root / _revision(listing)
    fetched = not final.is_dir()
    if fetched:
        _sweep(root)
        with _discarded_on_failure(part):
            log.info("%s: %s", source.uri, mirror.sync())
        final = root / _revision(mirror.mirrored())  # what was mirrored, if it moved since
        fetched = _place(part, final)
    mirrored = BucketMirror(client, source, final / "data").mirrored()
    objects = list(spec.objects) or [SourceObject(key=source.prefix + rel, etag=etag, size=size)
                                     for rel, (etag, size) in sorted(mirrored.items())]
    origin = notified_origin(source, objects).model_copy(update={"delivery": spec.delivery})
    return _result(spec.provider, spec.delivery, final / "data", origin, fetched)


def _revision(listing: dict[str, list[Any]]) -> str:
    """A bucket prefix's state: a digest of every key with its ETag and size."""
    return hashlib.sha256(json.dumps(sorted(listing.items())).encode()).hexdigest()[:16]


def _part(root: Path, name: str) -> Path:
    """A hidden folder of this fetch's own beside the revisions (the plan step refuses a
    hidden component, so nothing reads it as a dataset)."""
    return root / f".{name}.{uuid.uuid4().hex[:12]}.part"


@contextlib.contextmanager
def _discarded_on_failure(part: Path) -> Iterator[None]:
    """A fetch into ``part``: removed if it fails (a killed one is swept later)."""
    try:
        yield
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise


def _place(part: Path, final: Path) -> bool:
    """Rename the complete ``part`` into place; True if this fetch placed it, False if a
    concurrent one placed the same revision first (theirs is kept, this copy dropped)."""
    try:
        os.rename(part, final)
    except OSError:
        shutil.rmtree(part, ignore_errors=True)
        if not final.is_dir():
            raise
        log.info("%s was placed by another fetch meanwhile", final)
        return False
    return True


def _sweep(root: Path, now: float | None = None) -> None:
    """Remove the ``.part`` folders killed fetches left (older than a day)."""
    now = time.time() if now is None else now
    for stale in root.glob(".*.part") if root.is_dir() else ():
        try:
            if now - stale.stat().st_mtime > STALE_PART_SECONDS:
                shutil.rmtree(stale, ignore_errors=True)
                log.info("removed %s, left by a fetch that did not finish", stale)
        except FileNotFoundError:
            continue


def _result(provider: str, delivery: str, data: Path, origin: Origin, fetched: bool) -> Fetched:
    event = make_event("dataset.updated", {"uri": str(data), "trigger": provider,
                                           "origin": origin},
                       source=SOURCE + provider, id=delivery)
    log.info("%s delivery %s: %s %s", provider, delivery,
             "fetched" if fetched else "already here:", data)
    return Fetched(str(data), event, fetched)
