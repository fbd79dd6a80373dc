"""The grammar of ``RETRAIN_MIN_CHANGE``: how much a run's data must change before it trains.

The one parser: the settings check it as they load (``core.settings``), so a bad value is a
configuration error before any run starts, and the runs judge by it (``workflows.minimum``).
Pure: no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class MinChange:
    """``"0"``: off; ``"600"``: 600 changed images; ``"1%"``: 1 % of the champion's training
    set."""

    count: int = 0
    share: float | None = None  # a fraction of the champion's training images

    @classmethod
    def parse(cls, text: str) -> MinChange:
        """Raises ``ValueError`` (what a settings validator reports) for anything else."""
        text = text.strip()
        try:
            if text.endswith("%"):
                share = float(text[:-1]) / 100
                if not (math.isfinite(share) and 0 <= share <= 1):
                    raise ValueError
                return cls(share=share)
            count = int(text)
            if count < 0:
                raise ValueError
            return cls(count=count)
        except ValueError:
            raise ValueError(f"min_change {text!r}: expected a count of changed images (600), "
                             "a share of the champion's training set from 0% to 100% (1%), "
                             "or 0") from None

    def images(self, champion_images: int) -> int:
        """The minimum in images, given the champion's training set's size."""
        if self.share is not None:
            return round(self.share * champion_images)
        return self.count

    def __str__(self) -> str:
        return f"{self.share * 100:g}%" if self.share is not None else str(self.count)
