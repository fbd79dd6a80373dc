"""A real model server under paced load, a selector promoting into its repository and the live
guard watching it: what the guard's live tests and ``benchmarks/_guard_rollback.py`` drive."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from dataset.seed import generate
from events import EventType, make_event
from events.payloads import ModelTrained
from services.selector.backends import LocalBackend
from services.selector.champion import ChampionStore
from services.selector.guard import Guard, Window
from services.selector.guard_rules import GuardThresholds
from services.selector.live import UrlSource
from services.selector.policy import Score
from services.selector.service import Selector


def altered(model_dir: Path | str, dest: Path, change: Callable[[np.ndarray, np.ndarray], None]) -> Path:
    """A copy of the cnn at ``model_dir`` whose output layer's (kernel, bias) ``change`` edits."""
    from services.trainer import export, models

    model = models.build("cnn")
    model.load_weights(str(Path(model_dir) / "assets.extra" / "weights.h5"))
    out = model.get_layer("probabilities")
    kernel, bias = out.get_weights()
    change(kernel, bias)
    out.set_weights([kernel, bias])
    return export.export(model, dest)


def nan_weight(kernel: np.ndarray, bias: np.ndarray) -> None:
    kernel[0, 0] = np.nan  # every answer NaN: the server answers 500


def never(*labels: int) -> Callable[[np.ndarray, np.ndarray], None]:
    def change(kernel: np.ndarray, bias: np.ndarray) -> None:
        bias[list(labels)] = -1e4  # these classes are never predicted
    return change


def nudge(kernel: np.ndarray, bias: np.ndarray) -> None:
    bias[0] += 1e-4  # other files, the same answers


class Load:
    """``rate`` predict requests a second, one image each, cycling over images of every class
    alike; each answer's (time, status) kept."""

    def __init__(self, url: str, rate: float = 100.0, per_class: int = 10) -> None:
        images, labels = generate(400, seed=11)
        order = np.concatenate([np.flatnonzero(labels == k)[:per_class] for k in range(10)])
        order = order.reshape(10, per_class).T.ravel()  # 0..9, 0..9, ...
        self.bodies = [{"instances": [images[i].astype(float).tolist()]} for i in order]
        self.url = url + "/v1/models/fashion-mnist:predict"
        self.rate = rate
        self.answers: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as http:
            i = 0
            next_at = time.monotonic()
            while not self._stop.is_set():
                try:
                    status = http.post(self.url, json=self.bodies[i % len(self.bodies)]).status_code
                except httpx.HTTPError:
                    status = 599
                self.answers.append((time.monotonic(), status))
                i += 1
                next_at += 1 / self.rate
                self._stop.wait(max(0.0, next_at - time.monotonic()))  # pacing, not timing

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def failed(self, since: float = 0.0, until: float = float("inf")) -> int:
        return sum(1 for t, s in list(self.answers) if since <= t <= until and s >= 500)

    def first_failure(self) -> float | None:
        return next((t for t, s in list(self.answers) if s >= 500), None)


class Table:
    """Scores by the model folder's name: the gate is not under test, the live guard is."""

    def __init__(self) -> None:
        self.scores: dict[str, float] = {}

    def score(self, model_uri: str, dataset_uri: str) -> Score:
        return Score(self.scores.get(Path(model_uri).name, 0.5))


def trained(run_id: str, model_uri: Path) -> object:
    return make_event(EventType.MODEL_TRAINED, ModelTrained(
        run_id=run_id, model_type="cnn", model_uri=str(model_uri), dataset_uri="/ds",
        dataset_digest="d", val_accuracy=0.9, val_loss=0.3, seconds=1.0), source="test")


class Rig:
    """The model server over ``repo`` on 127.0.0.1, a selector promoting into it, the guard
    polling its ``/metrics``; ``close()`` stops them."""

    def __init__(self, client, repo: Path, window: Window,
                 thresholds: GuardThresholds | None = None,
                 poll_seconds: float = 0.05) -> None:
        from core.http import BackgroundServer, bind
        from services.serving.app import create_app

        self.app = create_app(repo, poll_seconds=0.2)
        self.server = BackgroundServer(self.app, bind("127.0.0.1", 0, "model server"),
                                       "model-server").start()
        holder = self.app.state.holder
        self.emitted: list = []
        self.table = Table()
        self.store = ChampionStore(client, str(repo))
        self.selector = Selector(self.store, LocalBackend(repo, "fashion-mnist",
                                                          lambda _v: holder.refresh()),
                                 self.table, self.emitted.append)
        self.guard = Guard(self.store, self.selector.rollback, self.emitted.append,
                           UrlSource(self.server.url + "/metrics", clock=time.time),
                           thresholds or GuardThresholds(min_requests=100),
                           window, poll_seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.guard.run, args=(self._stop,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.server.stop()

    def rolled_back(self) -> list:
        return [e for e in list(self.emitted) if e.type is EventType.MODEL_ROLLEDBACK]
