"""The trainer's own callbacks: its progress, and its checkpoints for resumption.

Neither makes a step wait: the progress callback counts batches and reads the optimizer's
step and the logs (tensors, left as they are by Keras: nothing is converted each batch) only
when a point is due; the checkpoint saves every ``save_freq`` steps but not at the end of
the last epoch, where nothing would be left to resume (Keras deletes the backup when the fit
ends).
"""

from __future__ import annotations

import resource
import time
from typing import Any

import tf_keras as keras

from services.trainer.spec import Progress

PROGRESS_EVERY = 10  # steps between progress points (the last step always has one)


class ProgressCallback(keras.callbacks.Callback):
    """Reports the optimizer's own step count every ``every`` steps and at the last, so a
    resumed run continues where it was and the steps reported only grow."""

    def __init__(self, report: Progress, planned: int, batch: int, replicas: int = 1,
                 every: int = PROGRESS_EVERY) -> None:
        super().__init__()
        self._supports_tf_logs = True
        self._report = report
        self._replicas = replicas
        self._planned = planned
        self._batch = batch
        self._every = every
        self._first = self._counted = self._due = 0
        self._started = time.perf_counter()
        self.resumed_from = 0

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def _next_due(self, step: int) -> int:
        return min(self._planned, (step // self._every + 1) * self._every)

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._first = self.resumed_from = self._counted = self._step()
        self._due = self._next_due(self._first)
        self._started = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._counted += 1  # one optimizer step per batch: the optimizer's count, uncounted
        if self._counted < self._due:
            return
        step = self._counted = self._step()  # ...and checked against it at each point
        self._due = self._next_due(step)
        if step % self._every and step != self._planned:
            return
        elapsed = time.perf_counter() - self._started
        logs = logs or {}
        self._report({
            "step": step,
            "planned": self._planned,
            "resumed_from": self.resumed_from,
            # batch logs under MultiWorkerMirroredStrategy hold the sum over the replicas
            # of each one's value (an accuracy of 1.48 with two; tf_keras 2.21): average
            "loss": round(float(logs.get("loss", 0.0)) / self._replicas, 4),
            "accuracy": round(float(logs.get("accuracy", 0.0)) / self._replicas, 4),
            "examples_per_second": round((step - self._first) * self._batch
                                         / max(elapsed, 1e-9), 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        })


class Checkpoint(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` without the backup at the last epoch's end (deleted unread when
    the fit returns a moment later), and, when it saves every ``save_freq`` steps, without
    an assignment to a TensorFlow variable before every step: the batch a checkpoint was
    saved at is written into its variable only when one is saved (the same checkpoint)."""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if epoch + 1 < self.params.get("epochs", epoch + 2):
            super().on_epoch_end(epoch, logs)

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        pass  # BackupAndRestore assigns ``batch`` to the training state's variable here

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.save_freq != "epoch" and self._batches_count + 1 >= self.save_freq:
            self._training_state._ckpt_saved_batch.assign(batch)  # the one it saves next
        super().on_train_batch_end(batch, logs)
