"""The demo scenario end to end, on real components, with a very small budget. Its trainings
are the test trainer's (``tests/standin_trainer.py``: ``retrain train``'s process with the
learning replaced), as the demo's subject is the chain around them; ``test_reproduce`` runs
the real runner, trainer and selector together."""

import pytest
from rich.console import Console

from retrain.demo import DemoConfig, run_demo

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_scenario(settings, tmp_path, standin_trainer):
    console = Console(file=open(tmp_path / "demo.log", "w"), width=150)
    result = run_demo(settings.model_copy(update={"data_uri": None}),
                      DemoConfig(train_size=1500, test_size=300, steps=15, increment=120,
                                 batch_size=32, timeout=300), console)
    stage1, stage2, stage3 = result["stage1"], result["stage2"], result["stage3"]
    assert stage1["trigger"] == "dataset.updated/watcher"
    assert stage1["cache"]["hit"] is False
    assert stage1["status"] == "succeeded" and set(stage1["models"]) == {"cnn", "dropout", "batch_norm"}
    assert any(d["type"] == "model.promoted" for d in stage1["decisions"])
    assert stage2["trigger"] == "dataset.updated/manual"
    assert stage2["cache"]["hit"] is True
    assert [s["status"] for s in stage2["steps"] if s["name"] == "ingest"] == ["skipped"]
    trainings = {s["name"]: s for s in stage2["steps"] if s["name"].startswith("train:")}
    assert set(trainings) == {"train:cnn", "train:dropout", "train:batch_norm"}
    for name, step in trainings.items():  # the same trainings again: three hits, none run
        assert step["status"] == "cached" and step["seconds"] == 0, step
        assert step["reason"].startswith(f"hit: {name[6:]} trained on digest "), step
        assert step["trained_by"] == stage1["run_id"]
    assert all(d["reason"].startswith("already judged") or "not better" in d["reason"]
               for d in stage2["decisions"]) and len(stage2["decisions"]) == 3
    runs = settings.home / "demo" / "runs"
    assert not list((runs / stage2["run_id"]).glob("*/train.log"))  # no training process
    assert len(list((runs / stage3["run_id"]).glob("*/train.log"))) == 3
    assert all(not s.get("cached") for s in stage3["steps"] if s["name"].startswith("train:"))
    assert stage3["cache"]["hit"] is False
    ingest3 = next(s for s in stage3["steps"] if s["name"] == "ingest")
    assert (ingest3["reused_units"], ingest3["new_units"]) == (2, 1)
    assert ingest3["records"]["train"] == 1500 + 120
    assert len(result["prediction"]["probabilities"]) == 10
    assert int(result["prediction"]["version"]) >= 1
    assert result["champion"]["version"] >= 1
