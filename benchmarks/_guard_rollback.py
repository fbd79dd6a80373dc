"""The live guard's reaction: under ~100 requests/s against a real model server, a promoted
model that answers 500s; the time from its first bad answer to the rollback, and the share of
the minute from that first bad answer whose requests failed (target <= 1 %).

    .venv/bin/python benchmarks/_guard_rollback.py   (bench_guard.py runs it as section 2)
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from _common import heading, line, loopback_redis, verdict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def section() -> Iterator[bool]:
    from services.selector.guard import Window
    from services.trainer import export, models
    from tests.services.selector.live_load import Load, Rig, altered, nan_weight, trained

    heading("2. from the first bad answer to the rollback (fast rule, ~100 requests/s)")
    with tempfile.TemporaryDirectory() as tmp, loopback_redis(Path(tmp)) as (client, _url):
        base = Path(tmp)
        good = export.export(models.build("cnn"), base / "runs" / "good")
        rig = Rig(client, base / "repo", Window(requests=500, seconds=900))
        rig.table.scores.update({"good": 0.8, "nan": 0.9})
        rig.selector.handle(trained("run-1", good))
        deadline = time.monotonic() + 60
        while rig.app.state.holder.served_version != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        load = Load(rig.server.url).start()
        try:
            while len(load.answers) < 300:
                time.sleep(0.05)
            nan = altered(good, base / "runs" / "nan", nan_weight)
            rig.selector.handle(trained("run-2", nan))
            while not rig.rolled_back() and time.monotonic() < deadline + 60:
                time.sleep(0.01)
            rolled_at = time.monotonic()
            while rig.app.state.holder.served_version != 3 and time.monotonic() < deadline + 90:
                time.sleep(0.01)
            first = load.first_failure()
            failed = load.failed(since=first or 0.0)
            rate = len(load.answers) / (load.answers[-1][0] - load.answers[0][0])
        finally:
            load.stop()
            rig.close()
    line("load", f"{rate:.0f} requests/s")
    line("first bad answer to the rollback", f"{(rolled_at - (first or rolled_at)) * 1000:.0f} ms")
    line("requests failed", f"{failed}")
    yield verdict("failed share of the minute from the first bad answer",
                  failed / (rate * 60), 0.01, unit="%")


def main() -> None:
    results = list(section())
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
