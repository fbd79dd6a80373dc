"""Small changes wait: a run whose data adds fewer new images than ``RETRAIN_MIN_CHANGE``
trains nothing and ends ``deferred``, saying why.

The new images are the data gate's count (``workflows.validate.Report.new_images``: labelled
images not in the reference, the champion's dataset and the data approved since). A deferred
run approves nothing, so the next run counts its images again: the changes add up, and the
first run past the minimum trains on all of them. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MinChange:
    """``"0"``: off; ``"600"``: 600 new images; ``"1%"``: 1 % of the champion's training set."""

    count: int = 0
    share: float | None = None  # a fraction of the champion's training images

    @classmethod
    def parse(cls, text: str) -> MinChange:
        text = text.strip()
        try:
            if text.endswith("%"):
                share = float(text[:-1]) / 100
                if not 0 <= share <= 1:
                    raise ValueError
                return cls(share=share)
            count = int(text)
            if count < 0:
                raise ValueError
            return cls(count=count)
        except ValueError:
            raise ValueError(f"min_change {text!r}: expected a count of new images (600), a "
                             "share of the champion's training set (1%), or 0") from None

    def images(self, champion_images: int) -> int:
        """The minimum in images, given the champion's training set's size."""
        if self.share is not None:
            return int(round(self.share * champion_images))
        return self.count

    def __str__(self) -> str:
        return f"{self.share * 100:g}%" if self.share is not None else str(self.count)


def deferral(minimum: MinChange, new_images: int | None, champion_images: int | None,
             manual: bool) -> str | None:
    """Why the run waits (``deferred: 120 new images < 600``), or None when it trains: the
    minimum is off or reached, the run was asked for by a person (a manual event, a
    ``training.requested``, ``--force``), or there is no champion (its first model always
    trains) or no count to judge by."""
    if manual or champion_images is None or new_images is None:
        return None
    needed = minimum.images(champion_images)
    if needed <= 0 or new_images >= needed:
        return None
    of = (f" ({minimum} of the champion's {champion_images} training images)"
          if minimum.share is not None else "")
    return f"deferred: {new_images} new images < {needed}{of}"


def is_manual(trigger: str, force: bool) -> bool:
    """Whether a person asked for the run whatever its size: ``--force``, a
    ``training.requested`` (an experiment, an approval) or a ``dataset.updated`` sent by hand."""
    return force or trigger.startswith("training.requested") or trigger == "dataset.updated/manual"
