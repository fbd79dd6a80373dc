"""Leases in Redis: who may do a thing now, renewed while it goes on, let go at the end.

A lease is a key holding its holder's token, set only when absent and with an expiry. The
holder renews it while it works (``Renewer``: one background thread for any number of leases,
every third of the lease; a Redis error is logged and the renewal tried again with backoff,
so an outage shorter than the lease loses nothing) and releases it at the end; a holder that
dies stops renewing and its lease lapses, so another can take over. Renewing and releasing
touch the key only while it still holds the holder's token.

With a ``fence`` key, each acquisition also takes the next number of a counter (the fencing
token): the owner of what is written under the lease stores a result only with the newest
fence, so a holder presumed dead cannot overwrite its successor's work. With ``reclaim``, a
renewal sets a lease that lapsed again (Redis restarted without it, an outage longer than the
lease) unless another holder took it: for a lease that only says its holder is alive.

The keys are the owner's: a ``Leases`` is given its prefixes by the module that owns them.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from typing import Self

import redis

from core.backoff import Backoff
from core.redact import redact

log = logging.getLogger(__name__)

# Renew only while the lease is ours (or, with ARGV[3] = 1, take it back if it lapsed).
_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if not holder and ARGV[3] == '1' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
# Release only if we still hold it; then, given a channel (ARGV[2]), tell it ARGV[3].
_RELEASE = """
local released = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then released = redis.call('DEL', KEYS[1]) end
if ARGV[2] then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return released
"""
# Take the lease if nobody holds it and, with a fence key (KEYS[2]), the next fence: one round
# trip. -1 while another holds it.
_ACQUIRE = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return -1 end
if not KEYS[2] then return 0 end
local fence = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return fence
"""


@dataclass(frozen=True)
class Lease:
    key: str  # what is leased, in its owner's words (a run id, a cache key)
    token: str  # the holder's, stored in the lease's key
    fence: int = 0  # the fencing token: higher for each later holder (0: not fenced)


class Leases:
    """The leases of one owner: ``lock + key`` holds the token; with ``fence``, ``fence + key``
    counts acquisitions (kept ``fence_ttl`` seconds after the last)."""

    def __init__(self, client: redis.Redis, lock: str, *, fence: str | None = None,
                 fence_ttl: int = 0, reclaim: bool = False) -> None:
        self._r = client
        self._lock, self._fence, self._fence_ttl = lock, fence, fence_ttl
        self._reclaim = reclaim
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._acquire = client.register_script(_ACQUIRE)

    def fence_key(self, key: str) -> str:
        """Where the newest fence of ``key`` is (for the owner's write that checks it)."""
        if self._fence is None:
            raise ValueError("these leases are not fenced")
        return self._fence + key

    def acquire(self, key: str, ms: int, token: str | None = None) -> Lease | None:
        """The lease on ``key`` for ``ms`` milliseconds, or None while another holds it."""
        token = token or uuid.uuid4().hex
        fences = [] if self._fence is None else [self._fence + key]
        fence = int(self._acquire(keys=[self._lock + key, *fences],
                                  args=[token, ms, self._fence_ttl]))
        return None if fence < 0 else Lease(key, token, fence)

    def renew(self, lease: Lease, ms: int) -> bool:
        """Another ``ms`` milliseconds; False when the lease is no longer ours."""
        return bool(self._renew(keys=[self._lock + lease.key],
                                args=[lease.token, ms, "1" if self._reclaim else "0"]))

    def release(self, lease: Lease, tell: tuple[str, str] | None = None) -> bool:
        """Let the lease go; False when it was no longer ours (it lapsed, or another took it).
        ``tell``: a channel and a message published either way, in the same round trip."""
        return bool(self._release(keys=[self._lock + lease.key],
                                  args=[lease.token, *(tell or ())]))

    def holder(self, key: str) -> str | None:
        """The token of whoever holds the lease on ``key``, or None."""
        token = self._r.get(self._lock + key)
        return token.decode() if isinstance(token, bytes) else token

    def held(self, key: str) -> bool:
        return bool(self._r.exists(self._lock + key))


class Renewer:
    """Keeps leases renewed from one daemon thread (started with the first ``add``) until
    ``close``: every ``every`` seconds (a third of the lease unless said), or sooner after a
    failed round (``Backoff`` from 0.1 s up to ``every``). A Redis error is logged and tried
    again; a lease found taken by another holder is logged and no longer renewed."""

    def __init__(self, leases: Leases, ms: int, *, name: str = "lease-renewer",
                 every: float | None = None) -> None:
        self._leases, self._ms, self._name = leases, ms, name
        self.every = every if every is not None else ms / 3000
        self._held: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: list[Lease] = []  # leases another holder took while we renewed them

    def add(self, lease: Lease) -> None:
        with self._lock:
            self._held[lease.key] = lease
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def discard(self, lease: Lease) -> None:
        """Stop renewing ``lease`` (before releasing it)."""
        with self._lock:
            if self._held.get(lease.key) == lease:
                del self._held[lease.key]

    def close(self, timeout: float | None = None) -> None:
        """Stop renewing; waits (up to ``timeout``) for a renewal under way to end."""
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _run(self) -> None:
        retry = Backoff(min(0.1, self.every), self.every, stop=self._stop)
        wait = self.every
        while not self._stop.wait(wait):
            if self.renew_all():
                retry.reset()
                wait = self.every
            else:
                wait = retry.next()

    def renew_all(self) -> bool:
        """One round: True when every lease was renewed or found lost, False after an error."""
        with self._lock:
            held = list(self._held.values())
        ok = True
        for lease in held:
            try:
                renewed = self._leases.renew(lease, self._ms)
            except (redis.RedisError, OSError) as exc:
                ok = False
                log.warning("could not renew the lease on %s (%s); trying again", lease.key,
                            redact(str(exc)) or type(exc).__name__)
                continue
            except Exception:  # never end the renewals while the holder believes it holds
                ok = False
                log.exception("could not renew the lease on %s; trying again", lease.key)
                continue
            if not renewed:
                self._lose(lease)
        return ok

    def _lose(self, lease: Lease) -> None:
        with self._lock:
            if self._held.get(lease.key) != lease:
                return  # discarded meanwhile: released by its holder, not lost
            del self._held[lease.key]
            self.lost.append(lease)
        log.warning("the lease on %s was lost (it lapsed or another holder took it); no "
                    "longer renewing it", lease.key)
