"""A selector stopped at each phase of a promotion (intent recorded; champion record replaced
but the model not published; published but the decision not committed), then a new selector
on the same Redis and model repository reconciles: nothing half-done is left, and the
candidate's redelivery is judged exactly once. The stop is abrupt (a BaseException from
inside the step, which no ``except Exception`` cleanup sees), as a SIGKILL would leave it;
and once more with a real SIGKILL of a selector process at each phase."""

import os
import signal
import subprocess
import sys

import pytest

from events import EventType, make_event
from events.payloads import ModelTrained
from repository.layout import versions
from services.selector.backends import LocalBackend
from services.selector.champion import ChampionStore
from services.selector.policy import ChampionPolicy, Score
from services.selector.service import Selector

pytestmark = pytest.mark.integration


class Killed(BaseException):
    """The process dies here."""


SIGKILL_ITSELF = False  # set in a selector process of its own: die for real


def die():
    if SIGKILL_ITSELF:
        os.kill(os.getpid(), signal.SIGKILL)
    raise Killed


class Scores:
    def score(self, model_uri, dataset_uri):
        return Score({"a": 0.7, "b": 0.9}[model_uri.rsplit("/", 1)[-1]])


def trained(base, name):
    return make_event(EventType.MODEL_TRAINED, ModelTrained(
        run_id=f"run-{name}", model_type="cnn", model_uri=str(base / "cands" / name),
        dataset_uri="/ds", dataset_digest="d", val_accuracy=0.5, val_loss=1.0, seconds=1.0),
        source="t", id=f"{name}/trained")


@pytest.fixture
def base(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "cands" / name).mkdir(parents=True)
        (tmp_path / "cands" / name / "saved_model.pb").write_text(name)
    return tmp_path


def selector(r, base, backend=None, store=None, emitted=None):
    return Selector(store or ChampionStore(r), backend or LocalBackend(base / "repo", "fm"),
                    Scores(), (emitted if emitted is not None else []).append, ChampionPolicy())


class DiesBeforeCas(ChampionStore):
    def replace(self, expected_generation, new):
        if new.version == 2:
            die()
        return super().replace(expected_generation, new)


class DiesPublishing(LocalBackend):
    def __init__(self, repo, name, after_rename):
        super().__init__(repo, name)
        self.after_rename = after_rename

    def publish(self, staged, at_once=False):
        if staged.version == 2:
            if self.after_rename:
                super().publish(staged)
            die()
        super().publish(staged)


@pytest.mark.parametrize("phase, outcome, champion_version, served", [
    ("intent", "version 2 was staged but never made champion: discarded", 1, [1]),
    ("champion-replaced", "version 2's promotion was finished", 2, [1, 2]),  # the copy was whole
    ("published", "version 2's promotion was finished", 2, [1, 2]),
])
@pytest.mark.parametrize("kill", ["abrupt", "sigkill"])
def test_a_promotion_cut_short_is_finished_or_undone_by_the_next_selector(
        r, redis_handle, base, phase, outcome, champion_version, served, kill):
    repo = base / "repo"
    if kill == "sigkill":  # a selector process of its own, killed at that phase
        done = subprocess.run([sys.executable, "-c", FIRST, redis_handle.url, str(base), phase],
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    else:
        first_selector_dies_at(r, base, phase)

    emitted = []
    second = selector(r, base, emitted=emitted)
    assert second.reconcile() == outcome
    store = ChampionStore(r)
    assert store.get().version == champion_version and store.promotion() is None
    assert versions(repo / "fm") == served
    assert not [p for p in (repo / "fm").iterdir() if p.name.startswith(".tmp")]
    assert second.reconcile() is None  # nothing left to do

    # the candidate is redelivered (its stream entry was never acknowledged): judged once
    again = second.handle(trained(base, "b"))
    assert again.type is EventType.MODEL_PROMOTED
    assert store.get().model_type == "cnn" and store.get().accuracy == 0.9
    judged = [d for d in store.decisions() if d["run_id"] == "run-b"]
    assert len(judged) == 1
    assert versions(repo / "fm") == [1, 2]  # one version for b, whatever the phase


def first_selector_dies_at(r, base, phase):
    repo = base / "repo"
    if phase == "intent":
        first = selector(r, base, store=DiesBeforeCas(r))
    else:
        first = selector(r, base, DiesPublishing(repo, "fm", after_rename=phase == "published"))
    first.handle(trained(base, "a"))
    with pytest.raises(Killed):
        first.handle(trained(base, "b"))


FIRST = """
import sys
from pathlib import Path
import redis
from tests.services.selector import test_reconcile as t
t.SIGKILL_ITSELF = True
t.first_selector_dies_at(redis.Redis.from_url(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
"""


class DiesRollingBack(LocalBackend):
    """Dies in the rollback's publish (version 3: the first model again), before or after
    its rename; or, ``fails``, raises an ordinary error there."""

    def __init__(self, repo, name, phase):
        super().__init__(repo, name)
        self.phase = phase

    def publish(self, staged, at_once=False):
        if staged.version == 3:
            if self.phase == "fails":
                raise OSError("the volume is read-only")
            if self.phase == "published":
                super().publish(staged)
            die()
        super().publish(staged)


def _two_versions(r, base, backend=None):
    first = selector(r, base, backend)
    first.handle(trained(base, "a"))
    first.handle(trained(base, "b"))
    return first


@pytest.mark.parametrize("phase", ["restored", "published"])
def test_a_rollback_cut_short_is_finished_by_the_next_selector(r, base, phase):
    repo = base / "repo"
    first = _two_versions(r, base, DiesRollingBack(repo, "fm", phase))
    with pytest.raises(Killed):
        first.rollback("by hand")
    store = ChampionStore(r)
    assert store.promotion()["kind"] == "rollback"  # the intent outlived the selector

    emitted = []
    second = selector(r, base, emitted=emitted)
    assert second.reconcile() == "the rollback from version 2 was finished"
    assert (store.get().version, store.get().model_uri.endswith("/3")) == (3, True)
    assert versions(repo / "fm") == [1, 2, 3] and store.promotion() is None
    assert [e.id for e in emitted] == ["rollback/2"]  # its decision, told again
    assert [d["type"] for d in store.decisions()][-1] == "rollback"
    assert not [p for p in (repo / "fm").iterdir() if p.name.startswith(".tmp")]
    assert second.reconcile() is None


def test_a_rollback_whose_model_is_gone_is_undone_and_the_version_it_left_serves(r, base):
    repo = base / "repo"
    first = _two_versions(r, base, DiesRollingBack(repo, "fm", "restored"))
    with pytest.raises(Killed):
        first.rollback("by hand")
    for tmp in [p for p in (repo / "fm").iterdir() if p.name.startswith(".tmp")]:
        tmp.rename(base / "lost")  # the staged copy is lost with the node

    second = selector(r, base)
    assert second.reconcile() == ("the rollback from version 2 could not be published: "
                                  "version 2 serves again")
    store = ChampionStore(r)
    assert store.get().version == 2 and store.promotion() is None
    assert store.champion(3) is None  # never served: not among the versions
    previous, _ = store.previous()
    assert previous.version == 1  # a later rollback goes back to version 1 again
    assert second.rollback("again").data.version == 3


def test_a_rollback_that_cannot_be_published_changes_nothing(r, base):
    from services.selector.errors import SelectorError

    repo = base / "repo"
    first = _two_versions(r, base, DiesRollingBack(repo, "fm", "fails"))
    with pytest.raises(SelectorError, match="could not be published .*read-only.*version 2 still serves"):
        first.rollback("by hand")
    store = ChampionStore(r)
    assert store.get().version == 2 and store.promotion() is None
    assert store.previous()[0].version == 1 and versions(repo / "fm") == [1, 2]
    assert not [p for p in (repo / "fm").iterdir() if p.name.startswith(".tmp")]
