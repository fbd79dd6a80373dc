"""The promotion gate with real data, real models and the real selector: a push that rewrites
its test split so that a worse model scores better is refused by the pinned-set rule, a
class that loses too much refuses an otherwise better model, and a judgement is remembered
only with the pinned set it was made against."""

import numpy as np
import pytest
from rich.console import Console

from dataset import idx, pinned
from dataset.fingerprint import fingerprint
from dataset.ingest import ingest
from dataset.layout import BASE_FILES
from dataset.seed import generate
from dataset.store import load_metadata
from events import EventType, make_event
from events.payloads import ModelTrained, RunParameters
from repository.layout import versions
from services.selector.backends import LocalBackend
from services.selector.champion import ChampionStore
from services.selector.service import Selector
from tests.conftest import write_dataset
from tests.services.selector.test_already_judged import Counting

pytestmark = pytest.mark.integration


def _predictions(model_uri, images):
    """What a model answers for ``images`` (uint8, n x 28 x 28)."""
    import tensorflow as tf

    from repository.layout import ARRAYS_SIGNATURE, OUTPUT

    predict = tf.saved_model.load(model_uri).signatures[ARRAYS_SIGNATURE]
    probabilities = predict(images=tf.constant(images.astype(np.float32) / 255.0))[OUTPUT]
    return np.argmax(probabilities.numpy(), axis=1).astype(np.uint8)


def _with_test_split(root, images, labels, train_seed):
    """A dataset folder: a training split from the generator, and this test split."""
    write_dataset(root, train=600, test=10, seed=train_seed)
    idx.write_images(root / BASE_FILES["test"][0], images)
    idx.write_labels(root / BASE_FILES["test"][1], labels)
    return root


def _rules(decision):
    return {rule["name"]: rule for rule in decision["rules"]}


def _scores(decision):
    return {split["split"]: split for split in decision["scores"]}


@pytest.mark.slow
def test_a_push_that_rewrites_the_test_split_cannot_promote_a_worse_model(
        settings, r, tmp_path, standin_trainer, trained_models):
    from retrain.oneshot import run_once

    # the per-class rule has its own test: here the pinned set's rule is the subject
    settings = settings.model_copy(update={"promotion_max_class_drop": 1.0})
    quiet = Console(quiet=True)

    def push(root, steps):  # the test trainer: at most 5 steps is the weak model, more the good
        summary = run_once(settings, str(root), RunParameters(
            models=("cnn",), steps_per_epoch=steps, batch_size=32, validation="off"), quiet)
        [decision] = summary["decisions"]
        return summary["dataset_uri"], decision

    dataset_uri, first = push(write_dataset(tmp_path / "v1", train=600, test=200, seed=3), 3)
    assert first["decision"] == "model.promoted"  # the weak model: nothing to compare with
    in_force = pinned.pin_first(settings.store_dir, dataset_uri)  # (the runner's own pin stands)
    assert (in_force.dataset_uri, in_force.how) == (dataset_uri, pinned.FIRST)

    _, honest = push(write_dataset(tmp_path / "v2", train=600, test=200, seed=7), 10)
    assert honest["decision"] == "model.promoted", honest["reason"]  # a normal better model
    assert all(rule["passed"] for rule in honest["rules"]) and len(honest["rules"]) == 3
    assert _scores(honest)["pinned"]["dataset_digest"] == in_force.digest
    assert _scores(honest)["new"]["dataset_digest"] != in_force.digest

    # the third push rewrites its test split: each label is what the weak model answers
    images, _truth = generate(200, 11)
    rewritten = _with_test_split(tmp_path / "v3", images,
                                 _predictions(trained_models.weak.model_uri, images), 7)
    _, refused = push(rewritten, 3)
    new, on_pinned, rules = _scores(refused)["new"], _scores(refused)["pinned"], _rules(refused)
    assert new["candidate"] == 1.0 and new["candidate"] > new["champion"]  # it looks better
    assert rules["better"]["passed"]  # ... by today's rule alone, it would have been promoted
    assert refused["decision"] == "model.rejected"
    assert not rules["pinned_tolerance"]["passed"] and rules["class_drop"]["passed"]
    loss = on_pinned["champion"] - on_pinned["candidate"]
    assert loss > 0.005 and rules["pinned_tolerance"]["value"] == pytest.approx(loss)
    assert rules["pinned_tolerance"]["threshold"] == 0.005
    assert refused["reason"] == (
        f"refused by pinned_tolerance: worse on the pinned set {in_force.digest[:12]}: "
        f"{on_pinned['candidate']:.4f} vs champion {on_pinned['champion']:.4f} "
        f"({-loss:+.4f}, tolerance 0.0050)")
    assert len(on_pinned["candidate_per_class"]) == 10 == len(on_pinned["champion_per_class"])
    champion = ChampionStore(r, str(settings.model_repo.resolve())).get()
    assert champion.version == 2 and versions(settings.model_repo / "fashion-mnist") == [1, 2]


def _event(result, run_id, dataset_uri, digest):
    return make_event(EventType.MODEL_TRAINED, ModelTrained(
        run_id=run_id, model_type="cnn", model_uri=result.model_uri, dataset_uri=dataset_uri,
        dataset_digest=digest, val_accuracy=result.val_accuracy, val_loss=result.val_loss,
        seconds=result.seconds), source="retrain/trainer", id=f"{run_id}/cnn/trained")


def test_a_biased_champion_holds_no_class_hostage_and_a_new_pinned_set_judges_again(
        r, tmp_path, trained_models):
    """The weak model calls nearly everything a trouser or a dress: all their recall, little
    of their F1. On a test split where 30 images the good model does not call dresses are
    labelled dresses, the good model loses dress recall by far more than chance allows, and
    is still better on dresses by F1: promoted, the class_drop rule saying so."""
    store = tmp_path / "store"
    base = write_dataset(tmp_path / "base", train=300, test=200, seed=3)
    in_force = pinned.pin_first(store, ingest(base, store, fingerprint(base),
                                              dataset_key="base").dataset_uri)
    images, labels = generate(400, 21)
    weak = _predictions(trained_models.weak.model_uri, images)
    good = _predictions(trained_models.good.model_uri, images)
    relabelled = np.flatnonzero((weak == 3) & (good != 3))[:30]
    assert len(relabelled) == 30
    labels = labels.copy()
    labels[relabelled] = 3
    root = _with_test_split(tmp_path / "dresses", images, labels, 5)
    uri = ingest(root, store, fingerprint(root), dataset_key="dresses").dataset_uri
    digest = str(load_metadata(uri)["digest"])

    backend, counting = LocalBackend(tmp_path / "repo", "fashion-mnist"), Counting()
    selector = Selector(ChampionStore(r), backend, counting, lambda e: None)
    weak_model = trained_models.copy("weak", tmp_path / "r1" / "model")
    good_model = trained_models.copy("good", tmp_path / "r2" / "model")
    assert selector.handle(_event(weak_model, "r1", uri, digest)).type is EventType.MODEL_PROMOTED
    decision = selector.handle(_event(good_model, "r2", uri, digest)).data
    rules = {rule.name: rule for rule in decision.rules}
    assert all(rule.passed for rule in rules.values()), decision.reason
    [new] = [s for s in decision.scores if s.split == "new"]
    assert new.champion_per_class[3] - new.candidate_per_class[3] > rules["class_drop"].threshold
    assert " F1 " in rules["class_drop"].detail
    assert ChampionStore(r).get().run_id == "r2"

    # the weak model again: rejected, then remembered; another pinned set judges it anew,
    # every score remembered (per class too), so a new selector process loads nothing
    weak_again = trained_models.copy("weak", tmp_path / "r3" / "model")
    assert selector.handle(_event(weak_again, "r3", uri, digest)).type is EventType.MODEL_REJECTED
    loaded = len(counting.loaded)
    again = selector.handle(_event(weak_again, "r4", uri, digest)).data
    assert again.reason.startswith("already judged") and len(counting.loaded) == loaded
    pinned.pin(store, uri, "retrain golden set")
    other = Counting()
    later = Selector(ChampionStore(r), backend, other, lambda e: None)
    anew = later.handle(_event(weak_again, "r5", uri, digest)).data
    assert not anew.reason.startswith("already judged") and other.loaded == []
    assert anew.reason.startswith("refused by better")
    by_split = {s.split: s for s in anew.scores}
    assert by_split["pinned"].dataset_digest == digest != in_force.digest
    assert by_split["pinned"].candidate_per_class == by_split["new"].candidate_per_class


@pytest.fixture
def cli(tmp_path, redis_handle, r):
    """``retrain`` in a process of its own (its exit codes and error lines), and in this one
    (``cli.here``: the same commands, without a Python start-up each)."""
    import os
    import subprocess
    import sys

    from typer.testing import CliRunner

    from retrain.cli import app

    env = {"RETRAIN_HOME": str(tmp_path / "home"), "RETRAIN_REDIS_URL": redis_handle.url}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "retrain.cli", *args], capture_output=True,
                              text=True, timeout=300, env={**os.environ, **env}, check=False)

    def here(*args):
        result = CliRunner().invoke(app, list(args), env=env)
        assert result.exit_code == 0, (result.output, result.exception)
        return result.stdout

    run.here = here
    return run


def _json(out):
    import json

    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_golden_set_and_show_through_the_command_line(cli, tmp_path):
    nothing = cli("golden", "show")
    assert nothing.returncode == 1 and "no evaluation set is pinned" in nothing.stderr
    ingested = _json(cli.here("ingest", "--data", str(write_dataset(tmp_path / "first", 100, 30, 3)),
                              "--json"))
    assert cli("golden", "show").returncode == 1  # ingestion alone pins nothing: not validated
    first = _json(cli.here("run", "--data", str(tmp_path / "first"), "--models", "none", "--json"))
    assert first["dataset_uri"] == ingested["dataset_uri"] and first["validation"]["status"] == "pass"
    shown = _json(cli.here("golden", "show", "--json"))
    assert (shown["dataset_uri"], shown["how"]) == (first["dataset_uri"],
                                                    "the first dataset a run trained on")

    chosen = _json(cli.here("golden", "set", "--data",
                            str(write_dataset(tmp_path / "golden", 100, 40, 9)), "--json"))
    assert chosen["how"] == "retrain golden set" and chosen["replaced"]["key"] == shown["key"]
    assert chosen["test_images"] == 40 == sum(chosen["per_class"]) and len(chosen["per_class"]) == 10
    assert chosen["problem"] is None and chosen["key"] != shown["key"]
    assert _json(cli.here("golden", "show", "--json")) == {k: v for k, v in chosen.items()
                                                           if k != "replaced"}
    text = " ".join(cli.here("golden", "show").split())
    assert f"pinned evaluation set {chosen['key']}" in text and chosen["digest"] in text
    assert "40 images: t-shirt 4, trouser 4" in text and "by retrain golden set" in text

    missing = cli("golden", "set", "--data", str(tmp_path / "nope"))
    assert missing.returncode == 1 and "no such folder" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert _json(cli.here("golden", "show", "--json"))["key"] == chosen["key"]  # nothing changed
