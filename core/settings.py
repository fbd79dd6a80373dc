"""Settings shared by every service: environment variables prefixed ``RETRAIN_``.

Built once in an entry point and passed down; nothing reads the environment elsewhere.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.min_change import MinChange

MODEL_NAME = "fashion-mnist"
# the model variants retrain trains: the one list (run parameters, the trainer's options and
# models, the command line's help all read it)
MODEL_TYPES = ("cnn", "dropout", "batch_norm")


class Settings(BaseSettings):
    """Configuration of the local stack and of each service run on its own."""

    model_config = SettingsConfigDict(env_prefix="RETRAIN_", frozen=True, extra="ignore")

    home: Path = Path(".retrain")
    redis_url: str | None = None
    data_uri: str | None = None
    api_keys: Annotated[tuple[str, ...], NoDecode] = ()
    host: str = "127.0.0.1"
    serve_port: int = Field(8080, ge=0, le=65535)
    # the model server's gRPC Open Inference Protocol (Triton's default; KServe's 8081 is the
    # watcher's here)
    grpc_port: int = Field(8001, ge=0, le=65535)
    events_port: int = Field(8090, ge=0, le=65535)
    # the dashboard (retrain ui): its port, whether reading needs a key too, and the model
    # server its "try it" asks (default: this machine's serve port)
    ui_port: int = Field(8070, ge=0, le=65535)
    ui_require_key: bool = False
    ui_serve_url: str | None = None
    ui_selector_url: str | None = None  # rollbacks go to this selector's POST /rollback
    watch_interval: float = Field(0.5, gt=0)
    watch_settle: float = Field(1.0, ge=0)
    dedup_ttl_seconds: int = Field(24 * 3600, gt=0)
    cache_ttl_seconds: int = Field(7 * 24 * 3600, gt=0)  # both caches: entries unhit this long go
    # a run training a key holds it this long between renewals; if it dies, a waiting run
    # with the same key trains instead once the lease lapses
    training_lease_seconds: float = Field(30.0, gt=0)
    # the command that starts `retrain` for each training the local runner runs (its
    # arguments follow: `train --model ...`); unset: this Python with `-m retrain.cli`. For a
    # wrapper such as `nice -n 10 retrain`, or another environment's `retrain`.
    train_command: Annotated[tuple[str, ...], NoDecode] = ()
    offline: bool = False
    stream_max_length: int = Field(100_000, ge=1000)  # each event stream, MAXLEN ~
    # the watcher's Git webhooks
    github_webhook_secret: str | None = None
    gitlab_webhook_token: str | None = None
    git_token: str | None = None  # a private repository's token (or RETRAIN_GIT_TOKEN_FILE)
    git_token_file: Path | None = None
    s3_webhook_token: str | None = None  # bearer token bucket notifications must present
    # model server: requests per second per client, 0 meaning no limit
    rate_limit_anon: float = Field(50.0, ge=0)
    rate_limit_keyed: float = Field(0.0, ge=0)
    # micro-batching: images per model call (1 turns batching off), wait for stragglers (ms)
    serve_max_batch: int = Field(64, ge=1, le=1024)
    serve_batch_wait_ms: float = Field(0.0, ge=0, le=1000)
    # TensorFlow threads of `retrain serve` (intra-op and inter-op each); 0: TensorFlow's own
    # choice (one per core). A call on a batch of 28x28 images is too short to share out.
    serve_tf_threads: int = Field(1, ge=0, le=256)
    # model calls a version answers with TensorFlow before it is compiled for LiteRT (0: never
    # compiled, whatever SERVE_COMPILE_AT_LOAD says: no compile at load, no compile worker)
    serve_compile_after: int = Field(200, ge=0)
    # images accepted and not yet answered; past it a request is answered 503 + Retry-After
    serve_max_queued: int = Field(4096, ge=1)
    # per-version live statistics on /metrics (what the guard judges a new version by)
    serve_version_stats: bool = True
    # compile (and warm) each version for LiteRT while it loads, before it takes traffic (the
    # server is not ready until its first version is); false: after SERVE_COMPILE_AFTER calls
    serve_compile_at_load: bool = True

    # the data gate (retrain validate): each check warns past its _warn and blocks past its
    # _block threshold. class_balance: the largest change of a class's share of a split;
    # pixel_drift: Jensen-Shannon distance of a class's pixel histogram; duplicates: share of
    # the training split that repeats an image; leakage: share of the test (or pinned) images
    # also in the training split; label_agreement: how far the champion's agreement with the
    # new labels falls below its accuracy; min_train / min_test: the smallest splits allowed
    validation_class_balance_warn: float = Field(0.05, ge=0, le=1)
    validation_class_balance_block: float = Field(0.10, ge=0, le=1)
    validation_pixel_drift_warn: float = Field(0.10, ge=0, le=1)
    validation_pixel_drift_block: float = Field(0.20, ge=0, le=1)
    validation_duplicates_warn: float = Field(0.01, ge=0, le=1)
    validation_duplicates_block: float = Field(0.05, ge=0, le=1)
    validation_leakage_warn: float = Field(0.0, ge=0, le=1)
    validation_leakage_block: float = Field(0.01, ge=0, le=1)
    validation_label_agreement_warn: float = Field(0.15, ge=0, le=1)
    validation_label_agreement_block: float = Field(0.30, ge=0, le=1)
    validation_min_images: int = Field(100, ge=1)  # fewer new images: agreement not measured
    validation_min_train: int = Field(10, ge=1)
    validation_min_test: int = Field(10, ge=1)

    # selector: the promotion gate. A candidate must be better on its own test split, not
    # worse on the pinned evaluation set by more than PINNED_TOLERANCE (accuracy, 0.005 = half
    # a point), and lose no more than MAX_CLASS_DROP on any class of either split
    promotion_pinned_tolerance: float = Field(0.005, ge=0, le=1)
    promotion_max_class_drop: float = Field(0.03, ge=0, le=1)

    # selector: the live guard. After each promotion it watches the new version serve for a
    # window (WINDOW_REQUESTS answers or WINDOW_SECONDS, whichever comes first) and rolls it
    # back when, against the previous version's last window on the same server, its error
    # rate rose by more than MAX_ERROR_RATE_INCREASE (0.01 = one point), its p99 latency by
    # more than MAX_P99_RATIO (and above P99_FLOOR_MS), or its predicted classes moved further
    # than MAX_CLASS_DISTANCE (Jensen-Shannon distance); or at once, after CONSECUTIVE_ERRORS
    # errors in a row. Latency and classes are judged on MIN_REQUESTS answers or more.
    # METRICS_URL: the model server's /metrics (unset: this machine's serve port).
    guard: bool = True
    guard_window_requests: int = Field(500, ge=1)
    guard_window_seconds: float = Field(900.0, gt=0)
    guard_max_error_rate_increase: float = Field(0.01, ge=0, le=1)
    guard_max_p99_ratio: float = Field(2.0, ge=1)
    guard_p99_floor_ms: float = Field(20.0, ge=0)
    guard_max_class_distance: float = Field(0.15, ge=0, le=1)
    guard_consecutive_errors: int = Field(5, ge=1)
    guard_min_requests: int = Field(50, ge=1)
    guard_poll_seconds: float = Field(0.25, gt=0)
    guard_metrics_url: str | None = None
    # where the figures come from: url (one model server's /metrics: METRICS_URL, else this
    # machine's) or pods (every predictor pod of the InferenceService, summed per version:
    # a cluster, whichever backend promotes)
    guard_source: Literal["url", "pods"] = "url"
    # runs whose data changes less than this train nothing (status deferred) until the
    # changes add up: a count of changed images, new and removed ("600"), or a share of the
    # champion's training set ("1%"); "0": every change trains. A manual event or --force
    # trains regardless. Its grammar: core.min_change (checked as the settings load).
    min_change: str = "0"

    # selector: the champion policy (a round closes after QUORUM models or DEADLINE seconds)
    min_improvement: float = Field(0.0, ge=0, lt=1)
    round_quorum: int | None = Field(None, ge=1)
    round_deadline_seconds: float | None = Field(None, gt=0)
    # selector: where promoted models go. kserve: an InferenceService through the Kubernetes API
    promotion_backend: Literal["local", "kserve"] = "local"
    kube_api_url: str | None = None  # unset: the in-cluster API server and service account
    kube_token: str | None = None
    kserve_namespace: str = "retrain"
    kserve_storage_prefix: str = "pvc://retrain-data/models"  # the model repository's URI
    kserve_rollout: Literal["replace", "canary"] = "replace"
    kserve_canary_steps: Annotated[tuple[int, ...], NoDecode] = (10, 50)
    kserve_canary_step_seconds: float = Field(60.0, gt=0)
    kserve_canary_max_error_rate: float = Field(0.01, ge=0, le=1)
    kserve_canary_max_p99_ms: float = Field(500.0, gt=0)
    kserve_canary_metrics_url: str | None = None  # the canary's Prometheus /metrics
    # `retrain step fetch`: the S3-compatible endpoint of the bucket a notification names
    # (MinIO's; unset: AWS S3). Credentials are boto3's own (AWS_ACCESS_KEY_ID, ...)
    s3_endpoint: str | None = None
    # `retrain step fetch`: the repositories (clone URLs, comma-separated) a fetch spec may
    # name; a spec naming another is refused, so whoever may submit the workflow cannot have
    # the Git token sent elsewhere. Empty: any (the Sensor's filter names the one watched)
    fetch_repositories: Annotated[tuple[str, ...], NoDecode] = ()

    @field_validator("fetch_repositories", mode="before")
    @classmethod
    def _split_repositories(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(url.strip() for url in value.split(",") if url.strip())
        return value

    @field_validator("min_change")
    @classmethod
    def _check_min_change(cls, value: str) -> str:
        return str(MinChange.parse(value))  # ValueError: a configuration error, every field named

    @field_validator("kserve_canary_steps", mode="before")
    @classmethod
    def _split_steps(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return tuple(int(v) for v in value.split(",") if v.strip())
            except ValueError:
                raise ValueError(f"must be comma-separated percentages, got {value!r}") from None
        return value

    @field_validator("train_command", mode="before")
    @classmethod
    def _split_command(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return tuple(shlex.split(value))
            except ValueError as exc:
                raise ValueError(f"not a command line ({exc}): {value!r}") from None
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> tuple[str, ...]:
        if value is None or value == "":
            return ()
        if isinstance(value, str):
            return tuple(k.strip() for k in value.split(",") if k.strip())
        return tuple(value)  # type: ignore[arg-type]

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"must start with redis://, rediss:// or unix://, got {value!r}")
        return value

    @property
    def api_key(self) -> str | None:
        """The key this process presents when it sends events (the first configured)."""
        return self.api_keys[0] if self.api_keys else None

    @property
    def git_credential(self) -> str | None:
        """The Git token: ``RETRAIN_GIT_TOKEN``, else the first line of the file
        ``RETRAIN_GIT_TOKEN_FILE`` names (a mounted Secret)."""
        if self.git_token:
            return self.git_token
        if self.git_token_file is not None:
            lines = self.git_token_file.read_text().splitlines()
            return lines[0].strip() if lines else None
        return None

    @property
    def data_dir(self) -> Path:
        return self.home / "data" / "fashion-mnist"

    @property
    def store_dir(self) -> Path:
        """Where ingested datasets and content-addressed shards live."""
        return self.home / "store"

    @property
    def model_repo(self) -> Path:
        return self.home / "models"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def events_url(self) -> str:
        return f"http://{self.host}:{self.events_port}/events"
