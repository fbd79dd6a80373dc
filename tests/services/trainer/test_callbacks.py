"""The trainer's callbacks on a real (tiny) Keras fit: progress points every ten steps and at
the last, read from the optimizer, growing, resumed where the optimizer was; a checkpoint each
epoch but the last; and a clock that says which callback and which phase took the time."""

import numpy as np
import pytest

from services.trainer.spec import TrainResult

pytestmark = pytest.mark.integration


def _model():
    import tf_keras as keras

    inputs = keras.Input(shape=(4,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _data(n=64):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, 3, n)


def test_progress_is_reported_every_ten_steps_and_at_the_last_from_the_optimizers_count():
    from services.trainer.callbacks import ProgressCallback

    points = []
    x, y = _data()
    _model().fit(x, y, batch_size=4, epochs=2, steps_per_epoch=13, verbose=0,
                 callbacks=[ProgressCallback(points.append, planned=26, batch=4)])
    assert [p["step"] for p in points] == [10, 20, 26]
    assert all(p["planned"] == 26 and p["resumed_from"] == 0 for p in points)
    assert all(0.0 <= p["accuracy"] <= 1.0 and p["loss"] > 0 for p in points)
    assert all(p["examples_per_second"] > 0 for p in points)


def test_a_resumed_fit_reports_the_optimizers_steps_from_where_it_was():
    from services.trainer.callbacks import ProgressCallback

    points = []
    model = _model()
    x, y = _data(128)
    model.optimizer.build(model.trainable_variables)
    model.optimizer.iterations.assign(7)  # as BackupAndRestore leaves it, restored
    tracker = ProgressCallback(points.append, planned=32, batch=4)
    model.fit(x, y, batch_size=4, epochs=1, steps_per_epoch=25, verbose=0, callbacks=[tracker])
    assert [p["step"] for p in points] == [10, 20, 30, 32]
    assert tracker.resumed_from == 7 and {p["resumed_from"] for p in points} == {7}


def test_the_checkpoint_is_saved_each_epoch_but_the_last(tmp_path):
    import tf_keras as keras

    from services.trainer.callbacks import Checkpoint

    backup = tmp_path / "backup"
    seen = []

    class Look(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(sorted(p.name for p in backup.rglob("*.index")))

    x, y = _data()
    _model().fit(x, y, batch_size=4, epochs=3, steps_per_epoch=2, verbose=0,
                 callbacks=[Checkpoint(str(backup)), Look()])
    assert len(seen[0]) == 1 and len(seen[1]) == 1 and seen[1] != seen[0]
    assert seen[2] == seen[1]  # nothing new at the last epoch's end


def test_the_fit_clock_gives_each_timed_callback_and_the_validation_their_seconds():
    import tf_keras as keras

    from services.trainer.phases import FitClock

    now = [0.0]
    clock = FitClock(now=lambda: now[0])

    class Costs(keras.callbacks.Callback):  # time passes where this callback says
        def __init__(self, **seconds):
            super().__init__()
            self.seconds = seconds

        def on_epoch_end(self, epoch, logs=None):
            now[0] += self.seconds.get("epoch_end", 0.0)

        def on_train_batch_end(self, batch, logs=None):
            now[0] += self.seconds.get("batch_end", 0.0)

        def on_test_end(self, logs=None):
            now[0] += self.seconds.get("test_end", 0.0)

    x, y = _data()
    callbacks = [clock.opening(), Costs(epoch_end=5.0), clock.after("checkpoint"),
                 Costs(batch_end=0.5, test_end=2.0), clock.after("tensorboard")]
    clock.fit_called()
    _model().fit(x, y, batch_size=4, epochs=2, steps_per_epoch=3, validation_data=(x, y),
                 validation_freq=2, verbose=0, callbacks=callbacks)
    phases = clock.phases(fit_seconds=now[0] + 1.0)
    assert phases["checkpoint"] == 10.0  # two epoch ends of 5 s
    assert phases["tensorboard"] == 3.0  # six batch ends of 0.5 s
    assert phases["validation"] == 2.0  # only the last epoch's
    assert phases["first_step"] == 0.0 and phases["steps"] == 1.0  # the rest of the fit


def test_a_result_without_phases_still_reads():
    """result.json files written before the phases were recorded (and the test trainer's)."""
    result = TrainResult(model_uri="m", val_accuracy=0.5, val_loss=1.0, seconds=1.0, steps=1,
                         examples_per_second=1.0, digest="d")
    assert result.phases == {}


def test_a_fit_stopped_mid_epoch_resumes_after_the_last_steps_checkpoint(tmp_path):
    """Every ``save_freq`` steps, the batch written into the checkpoint is the one it was
    saved at (assigned only when saving): the resumed fit does only the epoch's rest."""
    import tf_keras as keras

    from services.trainer.callbacks import Checkpoint

    class Killed(Exception):
        pass

    class Kill(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 5:  # after the checkpoint of batches 0-5
                raise Killed

    x, y = _data()
    backup = str(tmp_path / "backup")
    with pytest.raises(Killed):
        _model().fit(x, y, batch_size=4, epochs=1, steps_per_epoch=9, verbose=0,
                     callbacks=[Checkpoint(backup, save_freq=3), Kill()])
    resumed = _model()
    resumed.fit(x, y, batch_size=4, epochs=1, steps_per_epoch=9, verbose=0,
                callbacks=[Checkpoint(backup, save_freq=3)])
    assert int(resumed.optimizer.iterations.numpy()) == 9  # 6 restored + the 3 left
