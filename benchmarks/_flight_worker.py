"""One concurrent "run" for the single-flight benchmark, as its own process.

``worker URL INDEX``: waits for go messages on ``bench:go:INDEX`` and runs fingerprint →
check_cache → ingest_step for each, reporting on ``bench:done``.
``holder URL DATA STORE``: a run meant to be SIGKILLed while it holds the lease.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import _common  # noqa: F401  (puts the repository on sys.path)

from core.redis_store import connect
from core.cache_policy import Policy
from core.content_cache import ContentCache
from dataset.cache import ingestion_cache
from dataset.fingerprint import fingerprint
from workflows import steps

LEASE_MS = 2000


def one_run(cache: ContentCache, data: Path, store: Path) -> dict[str, object]:
    started = time.perf_counter()
    fp = fingerprint(data)
    check = steps.check_cache(cache, data, fp, Policy())
    if check.decision.hit:
        return {"ingested": False, "hit_at_check": True, "seconds": time.perf_counter() - started}
    outcome = steps.ingest_step(cache, data, store, fp, check.key, lease_ms=LEASE_MS)
    return {"ingested": outcome.ingested, "hit_at_check": False, "fence": outcome.entry.fence,
            "seconds": time.perf_counter() - started}


def main() -> None:
    mode, url = sys.argv[1], sys.argv[2]
    client = connect(url)
    cache = ingestion_cache(client, ttl_seconds=3600)
    if mode == "holder":
        one_run(cache, Path(sys.argv[3]), Path(sys.argv[4]))
        return
    index = sys.argv[3]
    client.rpush("bench:ready", index)
    while True:
        _, raw = client.blpop([f"bench:go:{index}"])
        message = json.loads(raw)
        if message.get("quit"):
            return
        result = one_run(cache, Path(message["data"]), Path(message["store"]))
        client.rpush("bench:done", json.dumps({"worker": index, "rep": message["rep"], **result}))


if __name__ == "__main__":
    main()
