"""The data gate's cost beside ingestion's, and the lineage query at 10,000 runs.

    .venv/bin/python benchmarks/bench_validation.py [--train 60000 --test 10000] [--runs 10000]

Prints:
  1. the profile (computed in the ingestion pass) and the checks ÷ a full ingestion of the
     70,000-image stand-in dataset, for a 1,000-image increment validated against the base
     the six data checks: target ≤ 0.2; beside it, the champion's inference on the increment's
     new images (label_agreement) and the one-off pass of a new champion over its reference's
     test split
  2. the lineage query's p50/p99 with 10,000 runs recorded: target p99 ≤ 100 ms
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from _common import heading, line, loopback_redis, median, timed, verdict

from core.cache_policy import Policy
from core.settings import Settings
from dataset import idx
from dataset.cache import ingestion_cache
from dataset.layout import BASE_FILES
from dataset.profile import Profiler
from dataset.seed import write_png_increment, write_standin
from services.selector.champion import Champion, ChampionStore
from workflows import steps
from workflows import validate as gate


def ingest(client, root: Path, store: Path, state: Path) -> tuple[float, str]:
    cache = ingestion_cache(client, 3600)
    fp = steps.fingerprint_step(root, state)
    check = steps.check_cache(cache, root, fp, Policy())
    seconds, outcome = timed(lambda: steps.ingest_step(cache, root, store, fp, check.key))
    return seconds, outcome.entry.dataset_uri  # type: ignore[union-attr]


def profile_seconds(root: Path) -> float:
    """The profile alone, over the same arrays ingestion hands it (in its 4,096 batches)."""
    batches = []
    for split in ("train", "test"):
        images_name, labels_name = BASE_FILES[split]
        labels = idx.read_labels(root / labels_name)
        at = 0
        for images in idx.iter_images(root / images_name):
            batches.append((images, labels[at:at + len(images)]))
            at += len(images)

    def run() -> None:
        profiler = Profiler()
        for images, labels in batches:
            profiler.add(images, labels)

    return median([timed(run)[0] for _ in range(5)])


def champion_model(folder: Path) -> str:
    from services.trainer import export, models

    path = folder / "champion"
    export.export(models.build("cnn"), path)
    return str(path)


def section_cost(work: Path, train: int, test: int) -> None:
    heading(f"1. the data gate vs ingestion ({train + test:,} images)")
    base = work / "base"
    _, generated = timed(lambda: write_standin(base, train=train, test=test))
    line("stand-in dataset", f"{train:,} + {test:,} images written")
    settings = Settings(home=work / "home", _env_file=None)
    with loopback_redis(work / "redis") as (client, _):
        ingestions = []
        for i in range(3):
            store = work / f"store-{i}"
            seconds, base_uri = ingest(client, base, store, work / f"state-{i}")
            ingestions.append(seconds)
            if i < 2:
                shutil.rmtree(store)
                client.flushdb()
        full = median(ingestions)
        line("full ingestion (profile included)", f"{full:.3f} s (median of 3)")
        profile = profile_seconds(base)
        line("the profile alone", f"{profile * 1000:.1f} ms ({profile / (train + test) * 1e6:.2f} µs/image)")

        pushed = work / "pushed"
        shutil.copytree(base, pushed)
        write_png_increment(pushed, "push", 1000, 99)
        _, pushed_uri = ingest(client, pushed, store, work / "state-2")
        model = champion_model(work)
        ChampionStore(client, str(settings.model_repo.resolve())).replace(0, Champion(
            version=1, model_uri=model, model_type="cnn", accuracy=0.1, dataset_digest="base",
            dataset_uri=base_uri, run_id="bench", generation=1))
        inputs = gate.inputs_for(client, settings, pushed_uri)
        first, report = timed(lambda: gate.validate(client, settings, inputs, "block"))
        without = gate.Inputs(inputs.dataset_uri, inputs.reference_uri, inputs.pinned_uri, None)
        data_checks = repeat(client, settings, without)
        with_champion = repeat(client, settings, inputs)
        line("the six data checks", f"{data_checks * 1000:.1f} ms (median of 5; labels, balance, "
             "drift, duplicates, leakage, size)")
        line("+ the champion on 1,000 new images", f"{(with_champion - data_checks) * 1000:.1f} ms "
             f"({(with_champion - data_checks) / 1000 * 1000:.3f} ms/image: one inference pass)")
        line("a new champion's first pass", f"{first * 1000:.0f} ms (once per champion and "
             f"reference: its {test:,} reference test images, then remembered)")
        line("report", report.line()[:100])  # type: ignore[union-attr]
        verdict("(profile + data checks) ÷ full ingestion", (profile + data_checks) / full, 0.2)
        verdict("the whole gate (label_agreement's inference too) ÷ ingestion",
                (profile + with_champion) / full, 0.2)


def repeat(client, settings: Settings, inputs: gate.Inputs) -> float:
    """The median of 5 validations, the memoised report forgotten before each."""
    seconds = []
    for _ in range(5):
        client.delete(gate.PREFIX + inputs.key(gate.validation.Thresholds.of(settings)))
        seconds.append(timed(lambda: gate.validate(client, settings, inputs, "block"))[0])
    return median(seconds)


def section_lineage(runs: int) -> None:
    heading(f"2. the lineage query with {runs:,} runs recorded")
    from _lineage_bench import lineage_p99

    figures = lineage_p99(runs)
    line("records", f"{figures['runs']:,} runs, {figures['promotions']:,} versions served "
         f"(written in {figures['fill_seconds']} s)")
    line("the served version's lineage", f"p50 {figures['p50_ms']:.2f} ms, p99 "
         f"{figures['p99_ms']:.2f} ms over {figures['queries']} queries")
    line("a version served earlier", f"p99 {figures['past_version_p99_ms']:.2f} ms")
    verdict("lineage p99 (ms) ÷ 100 ms", figures["p99_ms"] / 100.0, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=60_000)
    parser.add_argument("--test", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=10_000)
    args = parser.parse_args()
    from core.tf_start import configure

    configure()
    import tensorflow  # noqa: F401  (imported once up front, kept out of every timing)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-validation-") as tmp:
        section_cost(Path(tmp), args.train, args.test)
    section_lineage(args.runs)
    line("total", f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
