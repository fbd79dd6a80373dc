"""Which candidates the selector will look at: only models this project trained, scored only
on datasets this project ingested.

A ``model.trained`` names a folder to load and a test split to score on; loading a SavedModel
runs its graph, and a test split chosen by the sender decides its score. So neither is taken
on trust: the model must lie (after following links) inside the project's runs folder, and
the dataset must be an ingested dataset of the project's store whose recorded digest is the
event's and whose shards still check out. Whoever sends the event, with or without a key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dataset.store import load_metadata, verify
from events.payloads import ModelTrained
from repository.layout import in_runs_folder


@dataclass(frozen=True)
class Admission:
    runs_dir: Path
    store_dir: Path

    def problem(self, trained: ModelTrained) -> str | None:
        """Why ``trained`` is refused, or None when both its model and its dataset are ours."""
        return self._model_problem(trained.model_uri) or self._dataset_problem(
            trained.dataset_uri, trained.dataset_digest)

    def _model_problem(self, model_uri: str) -> str | None:
        runs = self.runs_dir.resolve()
        try:
            model = Path(model_uri).resolve(strict=True)
        except (OSError, RuntimeError, ValueError):
            return f"model_uri {model_uri!r} does not exist"
        if not in_runs_folder(model, runs):
            return (f"model_uri {model_uri!r} lies outside the runs folder {runs}: only models "
                    "this project trained are judged")
        if not (model / "saved_model.pb").is_file():
            return f"model_uri {model_uri!r} is not a SavedModel (no saved_model.pb)"
        return None

    def _dataset_problem(self, dataset_uri: str, digest: str) -> str | None:
        datasets = (self.store_dir / "datasets").resolve()
        try:
            folder = Path(dataset_uri).resolve(strict=True)
        except (OSError, RuntimeError, ValueError):
            return f"dataset_uri {dataset_uri!r} does not exist"
        if folder.parent != datasets:
            return (f"dataset_uri {dataset_uri!r} is not a dataset of the store {datasets}: "
                    "candidates are scored only on test splits this project ingested")
        try:
            recorded = load_metadata(folder).get("digest")
        except (OSError, ValueError, AttributeError):
            return f"dataset_uri {dataset_uri!r} has no readable metadata"
        if recorded != digest:
            return (f"dataset_uri {dataset_uri!r} holds content {str(recorded)[:12]}…, not the "
                    f"event's dataset_digest {digest[:12]}…")
        damage = verify(folder)
        return f"dataset_uri {dataset_uri!r} cannot be trusted: {damage}" if damage else None
