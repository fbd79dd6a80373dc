"""Scores are remembered in Redis by model content and test split, per class too; one
remembered before per-class scores existed is scored again, once."""

import pytest

from services.selector.champion import scoped_key
from services.selector.policy import Score
from services.selector.scores import Scores, content

pytestmark = pytest.mark.integration


class Table:
    """A scorer that counts its calls (what is remembered is the subject, not the scoring)."""

    def __init__(self):
        self.calls = 0

    def score(self, model_uri, dataset_uri):
        self.calls += 1
        return Score(0.5, (0.4, 0.6) * 5)


def test_per_class_scores_are_remembered_and_older_records_scored_again(r, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "saved_model.pb").write_text("a model")
    r.hset(scoped_key("repo", "scores"), f"{content(str(model))}|/ds", "0.5")  # an older record
    table = Table()
    assert Scores(r, "repo", table).score(str(model), "/ds") == Score(0.5, (0.4, 0.6) * 5)
    assert table.calls == 1
    again = Table()  # another process: remembered, per class too
    assert Scores(r, "repo", again).score(str(model), "/ds").per_class == (0.4, 0.6) * 5
    assert again.calls == 0
