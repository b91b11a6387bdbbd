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
        """Patch mode: ``(N, len(genes))`` values for level-0 ``(x, y)`` ``centres`` of ``pyr``, each
        from its own window cut, resized and normalised as in training (the exact reference)."""
        ...

    def dense_step_um(self, requested_um: float) -> float:
        """The dense grid step nearest ``requested_um`` (a whole number of feature cells)."""
        ...

    def predict_cells(self, pyr, x0: float, y0: float, rows: int, cols: int, step_l0: float,
                      cells: np.ndarray | None = None) -> np.ndarray:
        """Dense mode: ``(rows, cols, len(genes))`` values on a regular grid whose first cell is
        centred at level-0 ``(x0, y0)``, ``step_l0`` level-0 px apart (one backbone pass per region);
        only the ``cells`` wanted ((rows, cols) bool) need be right."""
        ...
