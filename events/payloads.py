"""Data payloads of each event type: frozen pydantic models with a schema version."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.settings import MODEL_TYPES
from events.types import EventType

SCHEMA_VERSION = "1"
Trigger = Literal["watcher", "github", "gitlab", "s3", "minio", "manual", "schedule"]


class Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    schema_version: str = SCHEMA_VERSION


class RunParameters(BaseModel):
    """What a run trains and how; flows unchanged from an event into the run."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    models: tuple[str, ...] = MODEL_TYPES
    epochs: int = Field(1, ge=1, le=1000)
    steps_per_epoch: int | None = Field(None, ge=1)
    batch_size: int = Field(64, ge=1, le=65536)
    learning_rate: float = Field(1e-3, gt=0, lt=10)
    workers: int = Field(1, ge=1, le=16)  # worker processes per model (all-reduce)
    warm_start: bool = False  # start each model from the champion's weights when it matches
    # the grammar core.cache_policy.Policy parses: checked here so a bad event is refused with 400
    cache_policy: str = Field(
        "exact", pattern=r"^(exact|max-age=\d+(\.\d+)?[smhd]|min-change=0?\.\d*[1-9]\d*)$")
    # the training cache's policy (the same grammar without min-change, plus off)
    train_cache: str = Field("exact", pattern=r"^(exact|off|max-age=\d+(\.\d+)?[smhd])$")
    force: bool = False  # train every model again, whatever the training cache holds
    # the data gate: block (a failed check stops the run before any training), warn (the
    # run trains and the report keeps the failures), off (no checks)
    validation: Literal["block", "warn", "off"] = "block"
    # TensorFlow's op determinism (slower): a training that `retrain reproduce` can match
    deterministic: bool = False

    @field_validator("models")
    @classmethod
    def _known_models(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [m for m in value if m not in MODEL_TYPES]
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; expected some of {list(MODEL_TYPES)}")
        if len(set(value)) != len(value):
            raise ValueError("models must not repeat")
        return value


class FileChanges(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


class SourceObject(BaseModel):
    """One object a bucket notification named."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    key: str
    etag: str | None = None
    size: int | None = None


class Origin(BaseModel):
    """What the source of a change said about it: a Git push (repository, ref, commit,
    pusher), a bucket notification (bucket, objects), or a folder. Kept with the run, so a
    served model's lineage reaches the commit or object that caused it."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["git", "bucket", "folder", "manual"]
    repository: str | None = None
    ref: str | None = None
    commit: str | None = None
    pusher: str | None = None
    delivery: str | None = None  # the provider's delivery id
    bucket: str | None = None
    objects: tuple[SourceObject, ...] = Field((), max_length=100)  # the first 100 named
    objects_total: int | None = None  # how many the notification named in all
    folder: str | None = None


class DatasetUpdated(Payload):
    dataset: str = "fashion-mnist"
    uri: str
    digest: str | None = None
    previous_digest: str | None = None
    files: FileChanges = FileChanges()
    trigger: Trigger = "manual"
    parameters: RunParameters | None = None
    origin: Origin | None = None


class TrainingRequested(Payload):
    dataset: str = "fashion-mnist"
    uri: str
    parameters: RunParameters = RunParameters()
    approves: str | None = None  # the blocked run this request lets train (retrain approve)
    approved_by: str | None = None
    digest: str | None = None  # the content it approves: a run on other content fails


class IngestionCompleted(Payload):
    run_id: str
    digest: str
    dataset_uri: str
    records: dict[str, int]
    seconds: float
    reused_shards: int = 0
    new_shards: int = 0


class IngestionSkipped(Payload):
    run_id: str
    digest: str
    dataset_uri: str
    reason: str


class IngestionFailed(Payload):
    run_id: str
    uri: str
    problems: tuple[str, ...]


class CheckResult(BaseModel):
    """One named check of the data gate: what it measured, against what, and its outcome."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    value: float | None
    threshold: float | None
    status: Literal["pass", "warn", "block"]
    detail: str = ""


class DatasetRejected(Payload):
    """The data gate blocked a run: no training started. ``checks`` holds every check."""

    run_id: str
    digest: str
    dataset_uri: str
    reference: str | None  # the digest of the dataset compared with (the champion's)
    status: Literal["blocked"] = "blocked"
    checks: tuple[CheckResult, ...]


class TrainingStarted(Payload):
    run_id: str
    model_type: str
    dataset_uri: str
    workers: int = 1


class ModelTrained(Payload):
    run_id: str
    model_type: str
    model_uri: str
    dataset_uri: str
    dataset_digest: str
    val_accuracy: float
    val_loss: float
    seconds: float
    workers: int = 1
    steps: int = 0
    # how many trainings the run started: the selector's round closes once they all ended
    round_size: int | None = Field(None, ge=1)
    cached: bool = False  # a training-cache hit: the model an identical training made earlier
    weights_digest: str = ""  # of the weights' values: the selector judges each once per champion
    seed: int | None = None  # the training's random seed (its lineage: what reproduces it)
    deterministic: bool = False  # trained with TensorFlow's op determinism


class TrainingFailed(Payload):
    run_id: str
    model_type: str
    reason: str
    round_size: int | None = Field(None, ge=1)  # as in ModelTrained


class SplitScores(BaseModel):
    """A candidate's and the champion's accuracy on one evaluation split, overall and per
    class: ``new`` (the candidate's own test split) or ``pinned`` (the pinned evaluation set)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    split: Literal["new", "pinned"]
    dataset_digest: str | None = None
    candidate: float | None = None
    champion: float | None = None
    candidate_per_class: tuple[float, ...] = ()
    champion_per_class: tuple[float, ...] = ()


class GateRule(BaseModel):
    """One rule of the promotion gate, with its figures."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str  # better, pinned_tolerance, class_drop
    passed: bool
    value: float | None = None
    threshold: float | None = None
    detail: str = ""


class Decision(Payload):
    run_id: str
    model_type: str
    model_uri: str
    candidate_accuracy: float | None  # None: refused or failed before it could be scored
    champion_accuracy: float | None
    champion_version: int | None
    reason: str
    scores: tuple[SplitScores, ...] = ()  # every figure the gate looked at
    rules: tuple[GateRule, ...] = ()  # every rule of the gate, passed or not


class ModelPromoted(Decision):
    version: int


class ModelRejected(Decision):
    pass


class LiveFigures(BaseModel):
    """One served version's figures over a window of live traffic, as the guard read them
    from the model server's per-version statistics."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    version: int
    requests: int
    errors: int  # answers with a 5xx status
    error_rate: float
    p99_seconds: float | None = None
    classes: tuple[int, ...] = ()  # answers predicting each class, by class index
    seconds: float = 0.0  # how long the window lasted


class ModelRolledBack(Payload):
    """The guard took a promoted version back after watching it serve: ``rule`` is the first
    rule it broke, ``rules`` every rule with its figures, ``window`` the version's live
    figures and ``baseline`` the previous version's last window on the same server."""

    version: int  # the version taken back
    model_digest: str  # its files' digest: refused if it arrives again, until approved
    run_id: str | None = None  # the run whose model it was
    model_type: str | None = None
    restored_version: int  # the version number the previous model now serves as
    previous_version: int  # the version whose model serves again
    rule: str  # consecutive_errors, error_rate, p99_latency or class_distribution
    reason: str
    rules: tuple[GateRule, ...] = ()
    window: LiveFigures | None = None
    baseline: LiveFigures | None = None


PAYLOADS: dict[EventType, type[Payload]] = {
    EventType.DATASET_UPDATED: DatasetUpdated,
    EventType.TRAINING_REQUESTED: TrainingRequested,
    EventType.INGESTION_COMPLETED: IngestionCompleted,
    EventType.INGESTION_SKIPPED: IngestionSkipped,
    EventType.INGESTION_FAILED: IngestionFailed,
    EventType.DATASET_REJECTED: DatasetRejected,
    EventType.TRAINING_STARTED: TrainingStarted,
    EventType.MODEL_TRAINED: ModelTrained,
    EventType.TRAINING_FAILED: TrainingFailed,
    EventType.MODEL_PROMOTED: ModelPromoted,
    EventType.MODEL_REJECTED: ModelRejected,
    EventType.MODEL_ROLLEDBACK: ModelRolledBack,
}
