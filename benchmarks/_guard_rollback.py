"""The live guard's reaction: under ~100 requests/s against a real model server, a promoted
model that answers 500s; the time from its first bad answer to the rollback (when the guard
recorded it), to the restored version being served (the server's holder swapped: requests fail
until then) and to the last failed answer the clients saw, and the share of the minute from
that first bad answer whose requests failed (target <= 1 %).

    .venv/bin/python benchmarks/_guard_rollback.py   (bench_guard.py runs it as section 2)
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import heading, line, loopback_redis, verdict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rolled_back_and_served(rig: Any, restored: int, until: float) -> tuple[float, float]:
    """When the guard's rollback was first seen recorded, and when the server first served
    ``restored``, watched together (each to within ~5 ms)."""
    rolled_at = served_at = None
    while (rolled_at is None or served_at is None) and time.monotonic() < until:
        now = time.monotonic()
        if served_at is None and rig.app.state.holder.served_version == restored:
            served_at = now
        if rolled_at is None and rig.rolled_back():
            rolled_at = now
        time.sleep(0.005)
    if rolled_at is None or served_at is None:
        raise RuntimeError(f"no rollback served within the time allowed (rolled back: "
                           f"{rolled_at is not None}, version {restored} served: "
                           f"{served_at is not None})")
    return rolled_at, served_at


def section() -> Iterator[bool]:
    from services.selector.guard import Window
    from services.trainer import export, models
    from tests.services.selector.live_load import Load, Rig, altered, nan_weight, trained

    heading("2. from the first bad answer to the rollback and to the restored version served "
            "(fast rule, ~100 requests/s, the guard's default settings)")
    with tempfile.TemporaryDirectory() as tmp, loopback_redis(Path(tmp)) as (client, _url):
        base = Path(tmp)
        good = export.export(models.build("cnn"), base / "runs" / "good")
        # the guard's defaults: window, thresholds and its poll (RETRAIN_GUARD_POLL_SECONDS)
        from core.settings import Settings
        from services.selector.guard_rules import GuardThresholds

        defaults = Settings(_env_file=None)
        rig = Rig(client, base / "repo", Window(defaults.guard_window_requests,
                                                defaults.guard_window_seconds),
                  GuardThresholds.from_settings(defaults), defaults.guard_poll_seconds)
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
            rolled_at, served_at = _rolled_back_and_served(rig, 3, deadline + 60)
            after = len(load.answers)
            while len(load.answers) < after + 100 and time.monotonic() < deadline + 90:
                time.sleep(0.05)  # the restored version's answers, to see failures end
            first = load.first_failure()
            failed = load.failed(since=first or 0.0)
            last = max((t for t, code in list(load.answers) if code >= 500), default=None)
            rate = len(load.answers) / (load.answers[-1][0] - load.answers[0][0])
        finally:
            load.stop()
            rig.close()
    start = first or rolled_at
    line("load", f"{rate:.0f} requests/s")
    line("first bad answer to the rollback (recorded)", f"{(rolled_at - start) * 1000:.0f} ms")
    line("first bad answer to the restored version served",
         f"{(served_at - start) * 1000:.0f} ms")
    line("first bad answer to the last failed answer", f"{((last or start) - start) * 1000:.0f} ms")
    line("requests failed", f"{failed}")
    yield verdict("failed share of the minute from the first bad answer",
                  failed / (rate * 60), 0.01, unit="%")


def main() -> None:
    results = list(section())
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
