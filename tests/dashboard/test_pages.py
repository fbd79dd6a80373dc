"""The dashboard's pages as HTML, rendered from plain values (no Redis, no browser)."""

import re

from dashboard import pages


def _champion(version, accuracy):
    return {"version": version, "accuracy": accuracy, "model_type": "cnn", "run_id": "run-1"}


def _version_labels(svg):
    """The versions the chart's axis names (its texts that are a version number)."""
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
    return [m.group(1) for t in texts if (m := re.fullmatch(r"(?:version )?(\d+)", t))]


def test_the_champion_history_labels_only_the_one_version_there_is():
    svg = pages.history_chart([_champion(1, 0.81)])
    assert _version_labels(svg) == ["1"]
    assert svg.count("<circle") == 1


def test_the_champion_history_labels_each_version_present():
    svg = pages.history_chart([_champion(v, 0.8 + v / 100) for v in (2, 3, 5)])
    assert _version_labels(svg) == ["2", "3", "5"]
    assert svg.count("<circle") == 3


def test_a_long_champion_history_labels_its_first_and_last_versions_and_never_more_than_fit():
    svg = pages.history_chart([_champion(v, 0.8) for v in range(1, 201)])
    labels = [int(v) for v in _version_labels(svg)]
    assert labels[0] == 1 and labels[-1] == 200 and len(labels) <= 20
    assert set(labels) <= set(range(1, 201))


def test_labels_of_unevenly_numbered_versions_never_overlap():
    """Versions 1 to 19 and then 1000 crowd the axis's left end: labelled by where they are
    drawn, never closer than a label's width."""
    svg = pages.history_chart([_champion(v, 0.8) for v in [*range(1, 20), 1000]])
    labels = [int(v) for v in _version_labels(svg)]
    assert labels[0] == 1 and labels[-1] == 1000
    xs = [float(x) for x in re.findall(r"<text class=tick x=([\d.]+)", svg)]
    assert len(xs) == len(labels) and all(b - a >= 40 for a, b in zip(xs, xs[1:]))


def test_a_learning_curve_stays_clear_of_its_labels():
    points = [{"step": s, "loss": 2 / s, "accuracy": 1 - 1 / s} for s in (10, 20, 30, 40)]
    for field in ("loss", "accuracy"):
        svg = pages.curve(points, field, height=140)
        coords = re.search(r"<polyline points='([^']*)'", svg).group(1).split()
        ys = [float(c.split(",")[1]) for c in coords]
        assert min(ys) >= 16 and max(ys) <= 140 - 16  # labels: y 2..12 and 126..136
