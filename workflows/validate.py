"""The data gate as a workflow step: profile checks of an ingested dataset against the one the
champion was trained on, before any training (``retrain validate``, the local runner's
``validate`` step, ``retrain step validate`` on a cluster).

The report is memoised like ingestion, in Redis under ``retrain:validation:<key>``, keyed by
the dataset's content, the reference's, the pinned evaluation set's, the champion model and
the thresholds; the run's mode (block, warn or off) only decides what a failed check does.
The champion's agreement with the new labels needs one inference pass over the images new
since the reference, and one over the reference's test split: TensorFlow is imported only
then.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis
from blake3 import blake3

from core.settings import Settings
from dataset import idx, pinned, profile, validation
from dataset.example import read_unit
from dataset.store import load_metadata
from events.payloads import CheckResult
from repository.digest import model_digest
from workflows.errors import WorkflowError

log = logging.getLogger(__name__)
PREFIX = "retrain:validation:"
APPROVED = PREFIX + "approved"  # datasets approved despite a blocking check, newest first
APPROVED_KEPT = 20
REFERENCE_KEPT = 30 * 86400  # seconds the champion's figures on its reference are kept
MAX_AGREEMENT_IMAGES = 5000  # new images the champion judges at most (a sample beyond)
CHECKS = ("labels", "class_balance", "pixel_drift", "duplicates", "leakage", "label_agreement",
          "size")


class ReferenceNotFoundError(WorkflowError):
    exit_code = 2


@dataclass(frozen=True)
class Report:
    status: str  # pass, warn, blocked, off
    mode: str
    digest: str
    reference: str | None  # the digest compared with
    pinned: str | None
    checks: tuple[CheckResult, ...] = ()
    cached: bool = False
    key: str = ""
    seconds: float = 0.0
    profile: dict[str, Any] = field(default_factory=dict)
    untrainable: str | None = None  # why no approval can let this data train
    # labelled images not in the reference (the champion's dataset and data approved since),
    # the reference's images no longer in the data, and the reference's training images:
    # what a minimum change is judged by (``workflows.minimum``)
    new_images: int | None = None
    reference_images: int | None = None
    removed_images: int | None = None

    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status != "pass"]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["checks"] = [c.model_dump(mode="json") for c in self.checks]
        return out

    def blocked_message(self) -> str:
        """Why the data gate stopped a run: every check that did not pass, with what it found."""
        reasons = ([self.untrainable] if self.untrainable else []) + [
            f"{c.name} {c.status} ({c.detail})" for c in self.failed()]
        return "the data gate blocked the run: " + "; ".join(reasons)

    def step_detail(self) -> dict[str, Any]:
        """What a run's validate step records of the report (locally and on a cluster)."""
        return {"verdict": self.status, "reference": self.reference, "cached": self.cached,
                "reason": self.line(), "failed": [f"{c.name}: {c.status}" for c in self.failed()],
                "new_images": self.new_images, "removed_images": self.removed_images}

    def step_status(self) -> str | None:
        """The validate step's own status when it is not plainly ``succeeded``."""
        return {"off": "skipped", "blocked": "blocked"}.get(self.status)

    def line(self) -> str:
        """One line: the status and every check that did not pass, with its figures."""
        failed = self.failed()
        if not failed:
            return f"{self.status}: every check passed"
        return f"{self.status}: " + "; ".join(
            f"{c.name} {c.status} ({c.value} > {c.threshold}: {c.detail})" for c in failed)


def deferral(settings: Settings, report: Report, trigger: str, force: bool) -> str | None:
    """Why a validated run trains nothing yet (``deferred: 120 new images < 600``), or
    None: ``RETRAIN_MIN_CHANGE`` judged on the gate's count of new and removed images,
    unless a person asked for the run (``workflows.minimum``) or there is no champion to add
    to."""
    from workflows.minimum import MinChange, is_manual
    from workflows.minimum import deferral as judge

    return judge(MinChange.parse(settings.min_change), report.new_images,
                 report.reference_images, is_manual(trigger, force), report.removed_images or 0)


def find_dataset(store: Path, digest: str) -> str:
    """The ingested dataset in ``store`` whose content digest is (or starts with) ``digest``."""
    found = []
    for meta_file in sorted((store / "datasets").glob("*/metadata.json")):
        meta = json.loads(meta_file.read_bytes())
        if str(meta.get("digest", "")).startswith(digest):
            found.append((meta.get("created_at", 0), str(meta_file.parent)))
    if not found:
        raise ReferenceNotFoundError(f"no ingested dataset in {store} has digest {digest}")
    if len({uri for _, uri in found}) > 1 and len(digest) < 64:
        raise ReferenceNotFoundError(f"{len(found)} ingested datasets have digests starting "
                                     f"with {digest}: give more of it")
    return max(found)[1]


@dataclass(frozen=True)
class Inputs:
    """What a validation compares: the dataset, its reference and the pinned set, and the
    champion whose agreement with the new labels is measured."""

    dataset_uri: str
    reference_uri: str | None
    pinned_uri: str | None
    champion_uri: str | None
    approved: tuple[str, ...] = ()  # datasets approved since: their images are not new
    champion_digest: str | None = None  # the champion's files: what memos know it by

    def key(self, thresholds: validation.Thresholds) -> str:
        def content(uri: str | None) -> str | None:
            return str(load_metadata(uri)["key"]) if uri else None

        def test_units(uri: str | None) -> set[str]:
            units = load_metadata(uri)["units"] if uri else []
            return {str(u["id"]) for u in units if u["split"] == "test"}  # type: ignore[union-attr]

        # the pinned set counts by the test images it adds to the dataset's own (leakage is
        # the one check reading it): the run that pins its own data keeps its report
        pinned = sorted(test_units(self.pinned_uri) - test_units(self.dataset_uri))
        material = {"dataset": content(self.dataset_uri), "reference": content(self.reference_uri),
                    "pinned": pinned, "champion": self.champion_digest or self.champion_uri,
                    "approved": sorted(str(content(a)) for a in self.approved),
                    "thresholds": asdict(thresholds), "checks": validation.CHECKS_VERSION}
        return blake3(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]


def inputs_for(client: redis.Redis, settings: Settings, dataset_uri: str,
               against: str | None = None) -> Inputs:
    """The reference (``against``, a digest, or the champion's dataset), the pinned set and
    the champion for validating ``dataset_uri``."""
    from services.selector.champion import ChampionStore

    champion = ChampionStore(client, str(settings.model_repo.resolve())).get()
    store = Path(dataset_uri).parent.parent
    if against:
        reference: str | None = find_dataset(store, against)
    elif champion is not None and (Path(champion.dataset_uri) / "metadata.json").is_file():
        reference = champion.dataset_uri
    else:
        if champion is not None:
            log.warning("the champion's dataset %s is gone: validating without a reference",
                        champion.dataset_uri)
        reference = None
    model = champion.model_uri if champion and Path(champion.model_uri).is_dir() else None
    approved = tuple(a for a in approved_datasets(client)
                     if a != dataset_uri and (Path(a) / "metadata.json").is_file())
    digest = model_digest(model) if model else None  # a path can hold another model later
    return Inputs(dataset_uri, reference, _pinned(store), model, approved, digest)


def remember_approved(client: redis.Redis, dataset_uri: str) -> None:
    """A blocked dataset someone approved: its images count as known in later validations
    (until the next champion's data holds them), so a later push is not blocked again for
    what was approved. The newest ``APPROVED_KEPT`` are kept."""
    with client.pipeline() as pipe:
        pipe.lrem(APPROVED, 0, dataset_uri)
        pipe.lpush(APPROVED, dataset_uri)
        pipe.ltrim(APPROVED, 0, APPROVED_KEPT - 1)
        pipe.execute()


def approved_datasets(client: redis.Redis) -> list[str]:
    return [a.decode() if isinstance(a, bytes) else a for a in client.lrange(APPROVED, 0, -1)]


def _pinned(store: Path) -> str | None:
    current = pinned.current(store)
    return current.dataset_uri if current and Path(current.dataset_uri).is_dir() else None


def validate(client: redis.Redis, settings: Settings, inputs: Inputs, mode: str) -> Report:
    """Run (or recall) the checks of ``inputs`` and judge them under ``mode``."""
    started = time.perf_counter()
    if mode == "off":  # no checks; but no model trains on labels outside the classes
        summary = profile.load(inputs.dataset_uri).summary()
        digest = str(load_metadata(inputs.dataset_uri)["digest"])
        untrainable = _untrainable(summary)
        return Report("blocked" if untrainable else "off", mode, digest, None, None,
                      untrainable=untrainable, profile=summary, **_counted(inputs))
    thresholds = validation.Thresholds.of(settings)
    key = inputs.key(thresholds)
    raw = client.get(PREFIX + key)
    kept = json.loads(raw) if raw is not None else None
    if kept is not None and "removed_images" in kept:  # an older retrain's memo: measured again
        checks = tuple(CheckResult(**c) for c in kept["checks"])
        cached = True
    else:
        kept, checks = _measure(client, inputs, thresholds)
        client.set(PREFIX + key, json.dumps({**kept, "checks": [c.model_dump(mode="json")
                                                                for c in checks]}),
                   ex=settings.cache_ttl_seconds)
        cached = False
    untrainable = kept.get("untrainable")
    status = "blocked" if untrainable else validation.status(checks, mode)
    report = Report(status, mode, kept["digest"], kept["reference"], kept["pinned"], checks,
                    cached, key, round(time.perf_counter() - started, 3), kept["profile"],
                    untrainable, kept["new_images"], kept["reference_images"],
                    kept["removed_images"])
    log.info("validated %s against %s: %s%s", report.digest[:12],
             (report.reference or "no reference")[:12], report.line(),
             " (remembered)" if cached else "")
    return report


def _measure(client: redis.Redis, inputs: Inputs, limits: validation.Thresholds
             ) -> tuple[dict[str, Any], tuple[CheckResult, ...]]:
    loaded: dict[str, profile.Profile] = {}  # the pinned set is often the reference, or this

    def load(uri: str | None) -> profile.Profile | None:
        if uri is not None and uri not in loaded:
            loaded[uri] = profile.load(uri)
        return loaded.get(uri) if uri else None

    new = load(inputs.dataset_uri)
    assert new is not None
    reference, pinned = load(inputs.reference_uri), load(inputs.pinned_uri)
    fresh, counted = _change(new, reference, [p for p in map(load, inputs.approved) if p])
    n_new = int(counted["new_images"] or 0)
    checks = (
        validation.labels(new, fresh, reference),
        validation.class_balance(new, fresh, reference, limits.class_balance),
        validation.pixel_drift(new, fresh, reference, limits.pixel_drift),
        validation.duplicates(new, fresh, limits.duplicates),
        validation.leakage(new, fresh, pinned, limits.leakage),
        _label_agreement(client, inputs, new, fresh, n_new, reference, limits),
        validation.size(new, fresh, reference, limits),
    )
    summary = new.summary()
    kept = {"digest": new.digest, "reference": reference.digest if reference else None,
            "pinned": pinned.digest if pinned else None, "profile": summary,
            "untrainable": _untrainable(summary), **counted}
    return kept, checks


def _change(new: profile.Profile, reference: profile.Profile | None,
            approved: list[profile.Profile]) -> tuple[profile.Marks, dict[str, int | None]]:
    """Which of ``new``'s images are new (against the reference and the data approved
    since), and the counts a minimum change is judged by: the new images, the reference's
    images ``new`` no longer holds, and the reference's training images."""
    fresh = validation.new_images(new, ([reference] if reference else []) + approved)
    return fresh, {
        "new_images": int(sum(mask.sum() for mask in fresh.values())),
        "removed_images": validation.removed_images(new, reference) if reference else None,
        "reference_images": int(reference.images("train").size) if reference else None}


def _counted(inputs: Inputs) -> dict[str, int | None]:
    """``_change``'s counts for a run whose checks are off (a minimum change still
    applies); none without a reference."""
    if inputs.reference_uri is None:
        return {"new_images": None, "removed_images": None, "reference_images": None}
    return _change(profile.load(inputs.dataset_uri), profile.load(inputs.reference_uri),
                   [profile.load(a) for a in inputs.approved])[1]


def _untrainable(summary: dict[str, Any]) -> str | None:
    """Why no model can train on this data, whatever the mode or approval: labels outside
    the classes."""
    unknown = sum(int(s["unknown_labels"]) for s in summary.values())
    return (f"{unknown} label(s) outside 0-9 cannot be trained on, whoever approves them: "
            "correct the data") if unknown else None


def _label_agreement(client: redis.Redis, inputs: Inputs, new: profile.Profile,
                     fresh: profile.Marks, n_new: int, reference: profile.Profile | None,
                     limits: validation.Thresholds) -> CheckResult:
    if inputs.champion_uri is None or reference is None:
        return validation.label_agreement(None, n_new, limits, "no champion to compare with")
    if n_new < limits.min_images:
        return validation.label_agreement(
            None, n_new, limits, f"{n_new} new labelled images < {limits.min_images}: not measured")
    if n_new > MAX_AGREEMENT_IMAGES:  # a sample measures agreement as well, at a bounded cost
        rng = np.random.default_rng(int(new.digest[:8], 16))
        keep = MAX_AGREEMENT_IMAGES / n_new
        fresh = {u: m & (rng.random(m.size) < keep) for u, m in fresh.items()}
    return validation.label_agreement(_agreement(client, inputs, new, fresh), n_new, limits)


def _agreement(client: redis.Redis, inputs: Inputs, new: profile.Profile,
               fresh: dict[str, np.ndarray]) -> validation.Agreement:
    """The champion's confusion counts on the new labelled images and on the reference's
    test split (remembered per champion and reference: a stack validates many pushes)."""
    assert inputs.champion_uri is not None and inputs.reference_uri is not None
    store = Path(inputs.dataset_uri).parent.parent
    counts = np.zeros((idx.NUM_CLASSES, idx.NUM_CLASSES), np.int64)
    for unit in new.units:
        mask = fresh.get(unit.unit)
        if mask is None or not mask.any():
            continue
        chosen = np.flatnonzero(mask & (unit.labels < idx.NUM_CLASSES))
        images = read_unit(store, unit.unit)[chosen]
        np.add.at(counts, (unit.labels[chosen], _predict(inputs.champion_uri, images,
                                                         inputs.champion_digest)), 1)
    reference = _reference_counts(client, inputs.champion_uri, inputs.reference_uri,
                                  inputs.champion_digest)
    return validation.Agreement(counts.tolist(), reference.tolist())


def _reference_counts(client: redis.Redis, champion_uri: str, reference_uri: str,
                      digest: str | None) -> np.ndarray:
    """The champion on its reference's test split, remembered in Redis (the same champion
    and reference for every push until the next promotion: one pass each)."""
    key = f"{PREFIX}reference:" + blake3(
        f"{digest or champion_uri}\n{load_metadata(reference_uri)['key']}".encode()).hexdigest()[:32]
    raw = client.get(key)
    if raw is not None:
        return np.asarray(json.loads(raw), np.int64)
    counts = _champion_on_test_split(champion_uri, reference_uri, digest)
    client.set(key, json.dumps(counts.tolist()), ex=REFERENCE_KEPT)
    return counts


def _champion_on_test_split(champion_uri: str, reference_uri: str,
                            digest: str | None) -> np.ndarray:
    ref = profile.load(reference_uri)
    store = Path(reference_uri).parent.parent
    counts = np.zeros((idx.NUM_CLASSES, idx.NUM_CLASSES), np.int64)
    for unit in ref.units:
        if unit.split == "test":
            known = np.flatnonzero(unit.labels < idx.NUM_CLASSES)
            images = read_unit(store, unit.unit)[known]
            np.add.at(counts, (unit.labels[known], _predict(champion_uri, images, digest)), 1)
    return counts


def _predict(model_uri: str, images: np.ndarray, digest: str | None = None) -> np.ndarray:
    """The champion's class for each image."""
    return _model(model_uri, digest)(images).argmax(axis=1)


@functools.lru_cache(maxsize=2)
def _model(model_uri: str, digest: str | None) -> Callable[[np.ndarray], np.ndarray]:
    """The champion's class probabilities (``services.selector.evaluate.predictor``, loaded
    once per process and files' ``digest``; TensorFlow imported here, the first time
    agreement is measured)."""
    from core.tf_start import configure

    configure()
    from services.selector.evaluate import predictor

    return predictor(model_uri)
