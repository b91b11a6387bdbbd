"""What a model must offer to be run over a region of a slide (live view, whole slide, segmentation)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class MapModel(Protocol):
    """A model that predicts per-location values (genes, class probabilities) from the slide.

    ``genes`` names the output channels (gene names, or class names for a segmenter);
    ``window_um`` is the largest physical window it looks at around a centre.
    """

    genes: list[str]
    window_um: float

    def predict_centres(self, pyr, centres: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """``(N, len(genes))`` values for level-0 ``(x, y)`` ``centres`` of ``pyr``."""
        ...
