"""Dead letters: events that could not be delivered or handled, kept with the reason.

Every dead-letter stream is ``<stream>:dead`` beside the stream it came from: an outbox's
(``retrain:outbox:<name>:dead``: refused by the receiver, or failed there too often) and the
selector's event stream (``retrain:events:dead``: a candidate whose judgement kept failing).
``replay`` puts entries back where they came from, so the outbox's sender delivers them again
(after a key rotation, say) or the selector's consumer group judges them again, and removes
them from the dead letters in the same transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import redis

SUFFIX = ":dead"


def dead_stream(stream: str) -> str:
    """Where ``stream``'s dead letters go."""
    return stream + SUFFIX


@dataclass(frozen=True)
class DeadLetter:
    stream: str  # the dead-letter stream
    entry_id: str
    reason: str
    event_type: str
    event_id: str
    source: str
    died_at: float  # seconds since the epoch (from the entry's id)

    @property
    def origin(self) -> str:
        return self.stream.removesuffix(SUFFIX)


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def dead_streams(client: redis.Redis) -> list[str]:
    return sorted(_text(key) for key in client.scan_iter(match="retrain:*" + SUFFIX, _type="stream"))


def _letter(stream: str, entry_id: bytes | str, fields: dict[bytes, bytes]) -> DeadLetter:
    entry = _text(entry_id)
    try:
        event = json.loads(fields.get(b"event", b"{}"))
    except ValueError:
        event = {}
    event = event if isinstance(event, dict) else {}
    return DeadLetter(stream, entry, _text(fields.get(b"reason", b"")),
                      str(event.get("type", "?")), str(event.get("id", "?")),
                      str(event.get("source", "?")), int(entry.split("-")[0]) / 1000)


def list_dead(client: redis.Redis, stream: str | None = None) -> list[DeadLetter]:
    """Every dead letter (of ``stream``, a dead-letter stream, if given), oldest first."""
    if stream is not None and not stream.endswith(SUFFIX):
        raise ValueError(f"{stream} is not a dead-letter stream (they end with {SUFFIX})")
    letters = [_letter(name, entry_id, fields)
               for name in ([stream] if stream else dead_streams(client))
               for entry_id, fields in client.xrange(name)]
    return sorted(letters, key=lambda d: (d.died_at, d.entry_id))


def replay(client: redis.Redis, ids: Iterable[str] = (),
           stream: str | None = None) -> list[DeadLetter]:
    """Put the dead letters ``ids`` (all of them if none given) back on the streams they came
    from; returns those replayed. Unknown ids are an error before anything moves. Nothing is
    trimmed on the way: an outbox holds undelivered events (dead letters are capped already)."""
    letters = list_dead(client, stream)
    wanted = set(ids)
    if wanted:
        known = {d.entry_id for d in letters}
        missing = sorted(wanted - known)
        if missing:
            raise ValueError(f"no dead letter {', '.join(missing)} "
                           f"(see retrain events dead-letters ls)")
        letters = [d for d in letters if d.entry_id in wanted]
    replayed = []
    for letter in letters:
        [(_id, fields)] = client.xrange(letter.stream, letter.entry_id, letter.entry_id) or [(None, None)]
        if fields is None:  # replayed by someone else meanwhile
            continue
        again = {k: v for k, v in fields.items() if k != b"reason"}
        with client.pipeline(transaction=True) as pipe:
            pipe.xadd(letter.origin, again)
            pipe.xdel(letter.stream, letter.entry_id)
            pipe.execute()
        replayed.append(letter)
    return replayed
