"""The event types of retrain: namespaced and stable."""

from __future__ import annotations

from enum import StrEnum

PREFIX = "dev.retrain."


class EventType(StrEnum):
    DATASET_UPDATED = "dev.retrain.dataset.updated"
    TRAINING_REQUESTED = "dev.retrain.training.requested"
    INGESTION_COMPLETED = "dev.retrain.ingestion.completed"
    INGESTION_SKIPPED = "dev.retrain.ingestion.skipped"
    INGESTION_FAILED = "dev.retrain.ingestion.failed"
    DATASET_REJECTED = "dev.retrain.dataset.rejected"  # the data gate blocked a run
    TRAINING_STARTED = "dev.retrain.training.started"
    MODEL_TRAINED = "dev.retrain.model.trained"
    TRAINING_FAILED = "dev.retrain.training.failed"
    MODEL_PROMOTED = "dev.retrain.model.promoted"
    MODEL_REJECTED = "dev.retrain.model.rejected"
    MODEL_ROLLEDBACK = "dev.retrain.model.rolledback"  # the live guard took a version back

    @property
    def short(self) -> str:
        return self.value.removeprefix(PREFIX)

    @classmethod
    def parse(cls, value: str) -> EventType:
        """Accept the full type or its short form (``dataset.updated``)."""
        from events.errors import UnknownEventTypeError

        full = value if value.startswith(PREFIX) else PREFIX + value
        try:
            return cls(full)
        except ValueError:
            raise UnknownEventTypeError(value) from None


RUN_REQUESTS = frozenset({EventType.DATASET_UPDATED, EventType.TRAINING_REQUESTED})
