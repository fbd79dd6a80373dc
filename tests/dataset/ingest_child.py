"""A run that ingests in its own process, so tests can SIGKILL it mid-ingestion.

Usage: python -m tests.dataset.ingest_child REDIS_URL DATA STORE LEASE_MS
Prints one JSON line with its outcome if it lives that long.
"""

import json
import sys
from pathlib import Path

from core.redis_store import connect
from core.cache_policy import Policy
from dataset.cache import ingestion_cache
from dataset.fingerprint import fingerprint
from workflows import steps


def main() -> None:
    url, data, store, lease_ms = sys.argv[1:5]
    cache = ingestion_cache(connect(url), ttl_seconds=600)
    root = Path(data)
    fp = fingerprint(root)
    key = steps.check_cache(cache, root, fp, Policy()).key
    outcome = steps.ingest_step(cache, root, Path(store), fp, key, lease_ms=int(lease_ms))
    print(json.dumps({"ingested": outcome.ingested, "fence": outcome.entry.fence}), flush=True)


if __name__ == "__main__":
    main()
