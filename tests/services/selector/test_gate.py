"""The promotion gate as a pure function: every rule is returned with its figures, passed or
not, and a refusal's reason names each failed rule with its own."""

import pytest

from services.selector.policy import ChampionPolicy, Figures, Score, Split, gate

POLICY = ChampionPolicy()  # tolerance 0.005 on the pinned set, 0.03 per class


def _classes(value, **changed):
    per_class = [value] * 10
    for label, score in changed.items():
        per_class[int(label[1:])] = score
    return tuple(per_class)


def _figures(new, pinned=None, pinned_is_new=False):
    """``new``/``pinned``: (candidate, champion) Scores."""
    return Figures(Split("new", "newdigest", *new),
                   Split("pinned", "pinneddigest0000", *pinned) if pinned else None, pinned_is_new)


def _rules(verdict):
    return {rule.name: rule for rule in verdict.rules}


def test_a_first_model_passes_every_rule():
    verdict = gate(POLICY, _figures((Score(0.6), None), (Score(0.5), None)))
    assert verdict.promote and verdict.reason == "first model: accuracy 0.6000, no champion yet"
    assert [(r.name, r.passed) for r in verdict.rules] == [
        ("better", True), ("pinned_tolerance", True), ("class_drop", True)]


def test_better_everywhere_is_promoted_with_all_three_rules_and_their_figures():
    verdict = gate(POLICY, _figures((Score(0.85, _classes(0.85)), Score(0.80, _classes(0.80))),
                                    (Score(0.81, _classes(0.81)), Score(0.80, _classes(0.80)))))
    assert verdict.promote
    assert verdict.reason.startswith("better: 0.8500 vs champion 0.8000 (+0.0500); pinned set "
                                     "pinneddigest: 0.8100 vs champion 0.8000 (+0.0100, "
                                     "tolerance 0.0050); no class lost more than it may")
    rules = _rules(verdict)
    assert rules["better"].value == pytest.approx(0.05) and rules["better"].threshold == 0
    assert rules["pinned_tolerance"].value == pytest.approx(-0.01)
    assert rules["pinned_tolerance"].threshold == 0.005
    assert rules["class_drop"].threshold == 0.03 and rules["class_drop"].passed


def test_a_rewritten_test_split_cannot_buy_a_promotion():
    """Better on its own (rewritten) test split, worse on the pinned set: refused, by name."""
    verdict = gate(POLICY, _figures((Score(0.95), Score(0.60)), (Score(0.62), Score(0.81))))
    assert not verdict.promote
    rules = _rules(verdict)
    assert rules["better"].passed and not rules["pinned_tolerance"].passed
    assert rules["pinned_tolerance"].value == pytest.approx(0.19)
    assert verdict.reason == ("refused by pinned_tolerance: worse on the pinned set pinneddigest: "
                              "0.6200 vs champion 0.8100 (-0.1900, tolerance 0.0050)")


def test_a_loss_within_the_tolerance_passes_and_the_tolerance_is_a_setting():
    figures = _figures((Score(0.90), Score(0.80)), (Score(0.805), Score(0.81)))
    assert gate(POLICY, figures).promote  # half a point lost: exactly the tolerance
    assert not gate(ChampionPolicy(pinned_tolerance=0.001), figures).promote


def test_without_a_pinned_set_the_pinned_rule_passes_saying_so():
    verdict = gate(POLICY, _figures((Score(0.9), Score(0.8))))
    assert verdict.promote
    assert _rules(verdict)["pinned_tolerance"].detail == "no pinned evaluation set"


def test_a_class_that_loses_more_than_allowed_on_either_split_refuses_the_candidate():
    new = (Score(0.90, _classes(0.90)), Score(0.80, _classes(0.80)))
    pinned = (Score(0.82, _classes(0.83, c6=0.70)), Score(0.80, _classes(0.80, c6=0.76)))
    verdict = gate(POLICY, _figures(new, pinned))
    assert not verdict.promote
    rules = _rules(verdict)
    assert rules["better"].passed and rules["pinned_tolerance"].passed
    assert not rules["class_drop"].passed and rules["class_drop"].value == pytest.approx(0.06)
    assert verdict.reason == ("refused by class_drop: 1 class(es) lost more than they may: class 6 "
                              "shirt on the pinned split 0.7000 vs champion 0.7600 (-0.0600, may "
                              "lose 0.0300)")
    assert gate(ChampionPolicy(max_class_drop=0.1), _figures(new, pinned)).promote


def test_a_class_may_lose_what_chance_allows_on_its_test_images():
    """Six points on 20 shirts is one or two images: chance, not a regression. On 1,000 shirts
    it is a regression."""
    def figures(images: int):
        counts = (images,) * 10
        return _figures((Score(0.90, _classes(0.90, c6=0.70), counts),
                         Score(0.80, _classes(0.80, c6=0.76), counts)))

    few = _rules(gate(POLICY, figures(20)))["class_drop"]
    assert few.passed and few.threshold == pytest.approx(2 * (2 * 0.76 * 0.24 / 20) ** 0.5)
    many = _rules(gate(POLICY, figures(1000)))["class_drop"]
    assert not many.passed and many.threshold == pytest.approx(max(0.03, 2 * (2 * 0.76 * 0.24 / 1000) ** 0.5))
    assert "may lose" in many.detail


def test_every_failed_rule_is_named_with_its_figures():
    verdict = gate(POLICY, _figures((Score(0.70, _classes(0.7, c0=0.5)), Score(0.80, _classes(0.8))),
                                    (Score(0.70), Score(0.80))))
    assert not verdict.promote
    assert verdict.reason.startswith("refused by better, pinned_tolerance, class_drop: not better: "
                                     "0.7000 vs champion 0.8000 (-0.1000); worse on the pinned set")
    assert "class 0 t-shirt on the new split 0.5000 vs champion 0.8000 (-0.3000, may lose 0.0300)" in verdict.reason


def test_the_pinned_set_being_the_new_split_is_counted_once():
    both = (Score(0.9, _classes(0.9, c3=0.5)), Score(0.8, _classes(0.8)))
    verdict = gate(POLICY, _figures(both, both, pinned_is_new=True))
    assert "1 class(es) lost" in _rules(verdict)["class_drop"].detail  # not twice
    assert [s.split for s in _figures(both, both, True).scores()] == ["new", "pinned"]


def test_the_gates_settings_are_validated_all_at_once():
    with pytest.raises(ValueError, match="pinned_tolerance must be within .* max_class_drop must"):
        ChampionPolicy(pinned_tolerance=-1, max_class_drop=2)


def test_the_gate_is_configured_from_the_environment(monkeypatch, tmp_path):
    from core.settings import Settings
    from services.selector.main import champion_policy

    monkeypatch.setenv("RETRAIN_PROMOTION_PINNED_TOLERANCE", "0.01")
    monkeypatch.setenv("RETRAIN_PROMOTION_MAX_CLASS_DROP", "0.1")
    monkeypatch.setenv("RETRAIN_MIN_IMPROVEMENT", "0.002")
    policy = champion_policy(Settings(home=tmp_path, _env_file=None))
    assert (policy.pinned_tolerance, policy.max_class_drop, policy.min_improvement) == (
        0.01, 0.1, 0.002)
    assert champion_policy(Settings(home=tmp_path, _env_file=None,
                                    promotion_pinned_tolerance=0.005)).pinned_tolerance == 0.005


def test_a_champion_that_calls_everything_one_class_does_not_hold_that_class_hostage():
    """The first model, served unjudged, calls most images dresses: all the dresses' recall,
    little of their F1. A model that fixes the bias loses dress recall and is still better
    on dresses by F1: promoted."""
    counts = (100,) * 10
    biased = Score(0.30, _classes(0.22, c3=1.0), counts, (20, 20, 20, 820, 20, 20, 20, 20, 20, 20))
    fixed = Score(0.85, _classes(0.85, c3=0.85), counts, (100,) * 10)
    verdict = gate(POLICY, _figures((fixed, biased)))
    assert verdict.promote, verdict.reason
    assert _rules(verdict)["class_drop"].passed
    recall_only = gate(POLICY, _figures((Score(0.85, _classes(0.85, c3=0.85), counts),
                                         Score(0.30, _classes(0.22, c3=1.0), counts))))
    assert not recall_only.promote  # without the predictions counted: recall, as before
