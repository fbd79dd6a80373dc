"""Where a fit's seconds go, measured by marks between its callbacks (no tensor is read).

Keras calls each hook on the callbacks in their list's order, so ``FitClock.opening()`` placed
first and ``FitClock.after(phase)`` placed right after a callback time that callback's hooks
(BackupAndRestore's saves, TensorBoard's writes) as ``phase``. The opening mark also sees
every batch end: the first step is what passes from the call to ``fit`` to the first batch's
end (the input pipeline's start, tracing, the first step), the validation what passes
between an epoch's last batch and its end hooks. The steps are the rest of the fit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import tf_keras as keras

FIRST_STEP, STEPS, VALIDATION = "first_step", "steps", "validation"


class FitClock:
    """``fit_called()`` just before ``model.fit``; ``phases(fit_seconds)`` after it."""

    def __init__(self, now: Callable[[], float] = time.perf_counter) -> None:
        self.now = now
        self.seconds: dict[str, float] = {}
        self.mark = self._called = 0.0
        self.last_batch_end: float | None = None
        self.batches = 0

    def fit_called(self) -> None:
        self._called = self.mark = self.now()

    def opening(self) -> keras.callbacks.Callback:
        """The first callback of the list."""
        return _Opening(self)

    def after(self, phase: str) -> keras.callbacks.Callback:
        """The callback right after the one whose hooks count as ``phase``."""
        return _Lap(self, phase)

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    def batch_ended(self, at: float) -> None:
        if not self.batches:  # less what the timed callbacks took meanwhile
            self.add(FIRST_STEP, at - self._called - sum(self.seconds.values()))
        self.batches += 1
        self.last_batch_end = self.mark = at

    def epoch_ended(self, at: float) -> None:
        if self.last_batch_end is not None:
            self.add(VALIDATION, at - self.last_batch_end)
            self.last_batch_end = None
        self.mark = at

    def phases(self, fit_seconds: float) -> dict[str, float]:
        """Seconds by phase, ``steps`` being the rest of ``fit_seconds``."""
        measured = {k: round(v, 3) for k, v in self.seconds.items()}
        return {**measured, STEPS: round(max(0.0, fit_seconds - sum(self.seconds.values())), 3)}


class _Mark(keras.callbacks.Callback):
    def __init__(self, clock: FitClock) -> None:
        super().__init__()
        self._clock = clock
        self._supports_tf_logs = True  # the logs stay tensors: nothing to convert or wait for

    def _at(self) -> None:
        raise NotImplementedError

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._at()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._at()

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._at()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._at()


class _Opening(_Mark):
    def _at(self) -> None:
        self._clock.mark = self._clock.now()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._clock.batch_ended(self._clock.now())

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._clock.epoch_ended(self._clock.now())


class _Lap(_Mark):
    def __init__(self, clock: FitClock, phase: str) -> None:
        super().__init__(clock)
        self._phase = phase

    def _at(self) -> None:
        now = self._clock.now()
        self._clock.add(self._phase, now - self._clock.mark)
        self._clock.mark = now

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._at()
        self._clock.last_batch_end = self._clock.mark  # the validation starts after this hook

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._at()
