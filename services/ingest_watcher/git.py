"""Datasets kept in a Git repository: push webhooks (GitHub, GitLab) and a local clone.

A webhook is verified (GitHub: ``X-Hub-Signature-256``, HMAC-SHA256 of the body; GitLab:
``X-Gitlab-Token``; both compared in constant time), its delivery id remembered in Redis so
a replay is answered without a second event, and a push that touches nothing under the
dataset path is answered and dropped. A push that does touch it is written to a durable
outbox before the answer; the fetch happens after: the clone is brought to the pushed branch
with ``git fetch`` and a forced checkout, and the dataset folder inside it is fingerprinted
like any folder, so a push whose content ends up identical emits nothing.

Only the repository configured for the watcher is ever fetched; the URL in a webhook body
is not trusted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from core.http import secret_matches
from core.redact import redact, register
from events.payloads import Origin

log = logging.getLogger(__name__)
MAX_SAID = 256  # characters kept of one thing a payload says (a ref, a commit, a name)


class GitError(RuntimeError):
    pass


@dataclass(frozen=True)
class GitSource:
    url: str  # what `git clone` takes: https://..., git@..., or a path
    branch: str = "main"
    path: str = "."  # the dataset folder inside the repository

    def __post_init__(self) -> None:
        pure = PurePosixPath(self.path)
        if pure.is_absolute() or ".." in pure.parts:
            raise ValueError(f"dataset path {self.path!r} must be relative, inside the repository")

    def touches(self, changed: list[str]) -> bool:
        """Whether any changed repository path lies under the dataset path."""
        prefix = PurePosixPath(self.path)
        if prefix == PurePosixPath("."):
            return bool(changed)
        return any(PurePosixPath(c) == prefix or prefix in PurePosixPath(c).parents for c in changed)


class Clone:
    """A working copy of the source under ``folder``, brought to the branch head on demand."""

    def __init__(self, source: GitSource, folder: Path, token: str | None = None) -> None:
        self.source = source
        self.folder = folder
        self.commit: str | None = None  # checked out by the last sync
        self._auth_env = _token_env(token) if token else {}
        register(token)  # from a file too: masked wherever it could appear

    @property
    def dataset_root(self) -> Path:
        return self.folder / self.source.path

    def _git(self, *args: str, cwd: Path | None = None) -> str:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                              env={"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/bin:/bin:/usr/local/bin",
                                   **self._auth_env})
        if done.returncode:
            # the URL may carry a token: never into a log line, an error or an event
            raise GitError(redact(f"git {' '.join(args)} failed: {done.stderr.strip()[-500:]}"))
        return done.stdout.strip()

    def sync(self) -> str:
        """Fetch the branch and check it out; says which commit is now checked out."""
        if not (self.folder / ".git").is_dir():
            self.folder.mkdir(parents=True, exist_ok=True)
            self._git("init", "-q", cwd=self.folder)
        self._git("fetch", "-q", "--depth", "1", self.source.url,
                  f"refs/heads/{self.source.branch}", cwd=self.folder)
        self._git("checkout", "-q", "--force", "--detach", "FETCH_HEAD", cwd=self.folder)
        self._git("clean", "-q", "-d", "-f", "-x", cwd=self.folder)
        self.commit = self._git("rev-parse", "HEAD", cwd=self.folder)
        return f"clone at {self.commit[:12]}"

    def origin(self, notified: Origin | None) -> Origin:
        """What the event of the checkout just synced says of its origin: the push that asked
        for it (``notified``) with the commit actually checked out, or, for a fetch no push
        asked for (the catch-up at start), the repository, branch and commit alone. When a
        later push was fetched with it, the commit is the checkout and the pusher is left out:
        who pushed that commit is not known here."""
        said = notified or Origin(kind="git", repository=redact(self.source.url),
                                  ref=f"refs/heads/{self.source.branch}")
        if said.commit and self.commit and said.commit != self.commit:
            log.info("push of %s fetched %s (a later push came with it)", said.commit[:12],
                     self.commit[:12])
            return said.model_copy(update={"commit": self.commit, "pusher": None})
        return said.model_copy(update={"commit": self.commit})


def _token_env(token: str) -> dict[str, str]:
    """A private repository's token as an HTTP header git sends (GitHub and GitLab accept
    Basic with any user name), given through git's environment-variable configuration: never
    on a command line (``ps``), in the URL, or in the clone's ``.git/config``."""
    basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    return {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader",
            "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}"}


def github_signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    if not header or not header.startswith("sha256="):
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return secret_matches(header.removeprefix("sha256="), (expected,)) is not None


def seen_key(provider: str, delivery: str) -> str:
    """The Redis key remembering a webhook delivery id (replay protection)."""
    return f"retrain:webhook:{provider}:{hashlib.sha256(delivery.encode()).hexdigest()}"


def _said(value: Any) -> str | None:
    """A string a payload gave (bounded), or None for anything else or nothing."""
    return value[:MAX_SAID] if isinstance(value, str) and value else None


def _field(payload: Any, *path: str) -> str | None:
    for key in path:
        payload = payload.get(key) if isinstance(payload, dict) else None
    return _said(payload)


def push_origin(provider: str, push: dict[str, Any], source: GitSource,
                delivery: str | None) -> Origin:
    """What a verified push payload says of the change: the repository (the configured one,
    which is what is fetched), the ref, the pushed commit (GitHub's ``after``, GitLab's
    ``checkout_sha``; none for a deleted branch), who pushed it (GitHub's ``pusher.name``,
    else ``sender.login``; GitLab's ``user_username``, else ``user_name``) and the delivery id."""
    if provider == "gitlab":
        commit = _said(push.get("checkout_sha")) or _said(push.get("after"))
        pusher = _said(push.get("user_username")) or _said(push.get("user_name"))
    else:
        commit = _said(push.get("after")) or _field(push, "head_commit", "id")
        pusher = _field(push, "pusher", "name") or _field(push, "sender", "login")
    if commit is not None and commit.strip("0") == "":  # the branch was deleted
        commit = None
    return Origin(kind="git", repository=redact(source.url), ref=_said(push.get("ref")),
                  commit=commit, pusher=pusher, delivery=_said(delivery))


def changed_paths(push: dict[str, Any]) -> list[str] | None:
    """Every path a push payload lists as added, modified or removed (GitHub and GitLab share
    the shape); None when the payload cannot tell (no commit list, e.g. a force push)."""
    commits = push.get("commits")
    if not isinstance(commits, list) or not commits or len(commits) >= 20:
        return None  # GitHub lists at most 20 commits: beyond that the list is not the push
    paths: list[str] = []
    for commit in commits:
        if not isinstance(commit, dict):
            continue
        for key in ("added", "modified", "removed"):
            value = commit.get(key)
            if isinstance(value, list):
                paths.extend(p for p in value if isinstance(p, str))
    return paths
