"""Small changes wait: a run whose data changes fewer images than ``RETRAIN_MIN_CHANGE``
trains nothing and ends ``deferred``, saying why.

The change is the data gate's count (``workflows.validate.Report``): the new images
(labelled images not in the reference, the champion's dataset and the data approved since:
added or relabelled) and the removed ones (the reference's images the data no longer holds),
so a push that only deletes bad data counts as much as one that adds. A deferred run approves
nothing, so the next run counts its changes again: they add up, and the first run past the
minimum trains on all of them. The minimum's grammar is ``core.min_change``. Pure: no I/O.
"""

from __future__ import annotations

from core.min_change import MinChange

__all__ = ["MinChange", "deferral", "is_manual"]


def deferral(minimum: MinChange, new_images: int | None, champion_images: int | None,
             manual: bool, removed_images: int = 0) -> str | None:
    """Why the run waits (``deferred: 120 new images < 600``, or with removals
    ``deferred: 120 changed images (100 new, 20 removed) < 600``), or None when it trains:
    the minimum is off or reached, the run was asked for by a person (a manual event, a
    ``training.requested``, ``--force``), or there is no champion (its first model always
    trains) or no count to judge by."""
    if manual or champion_images is None or new_images is None:
        return None
    needed = minimum.images(champion_images)
    changed = new_images + removed_images
    if needed <= 0 or changed >= needed:
        return None
    of = (f" ({minimum} of the champion's {champion_images} training images)"
          if minimum.share is not None else "")
    what = (f"{changed} changed images ({new_images} new, {removed_images} removed)"
            if removed_images else f"{new_images} new images")
    return f"deferred: {what} < {needed}{of}"


def is_manual(trigger: str, force: bool) -> bool:
    """Whether a person asked for the run whatever its size: ``--force``, a
    ``training.requested`` (an experiment, an approval) or a ``dataset.updated`` sent by hand."""
    return force or trigger.startswith("training.requested") or trigger == "dataset.updated/manual"
