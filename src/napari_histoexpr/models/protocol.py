"""What a model must offer to be run over a region of a slide (live view, whole slide, segmentation)."""

from __future__ import annotations

import threading
from typing import Protocol, runtime_checkable

import numpy as np

from ..models.dense import DenseJob, compute_cells, dense_at_centres, dense_step_um, read_cells


@runtime_checkable
class MapModel(Protocol):
    """A model that predicts per-location values (genes, class probabilities) from the slide.

    ``outputs`` names the output channels (gene names of an expression model, class names of a
    segmenter);
    ``window_um`` is the largest physical window it looks at around a centre.
    """

    outputs: list[str]
    window_um: float

    def predict_centres(self, pyr, centres: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Patch mode: ``(N, len(outputs))`` values for level-0 ``(x, y)`` ``centres`` of ``pyr``, each
        from its own window cut, resized and normalised as in training (the exact reference)."""
        ...

    def read_centres(self, pyr, centres: np.ndarray):
        """Patch mode, I/O half: what :meth:`compute_centres` needs for ``centres``."""
        ...

    def compute_centres(self, read, batch_size: int = 256) -> np.ndarray:
        """Patch mode, model half: ``(N, len(outputs))`` from what :meth:`read_centres` read."""
        ...

    def read_cells(self, pyr, x0: float, y0: float, rows: int, cols: int, step_l0: float,
                   cells: np.ndarray | None = None):
        """Dense mode, I/O half: what :meth:`compute_cells` needs for a grid of cells."""
        ...

    def compute_cells(self, regions) -> np.ndarray:
        """Dense mode, model half: ``(rows, cols, len(outputs))`` from what :meth:`read_cells` read."""
        ...

    def dense_step_um(self, requested_um: float) -> float:
        """The dense grid step nearest ``requested_um`` (a whole number of feature cells)."""
        ...

    def predict_cells(self, pyr, x0: float, y0: float, rows: int, cols: int, step_l0: float,
                      cells: np.ndarray | None = None) -> np.ndarray:
        """Dense mode: ``(rows, cols, len(outputs))`` values on a regular grid whose first cell is
        centred at level-0 ``(x0, y0)``, ``step_l0`` level-0 px apart (one backbone pass per region);
        only the ``cells`` wanted ((rows, cols) bool) need be right."""
        ...


class DenseMapModel:
    """The two prediction modes of a :class:`MapModel`, written once. Each half is split into its
    I/O part (``read_*``, run in reader threads) and its model part (``compute_*``).

    A model supplies ``device``, ``meta``, ``dense_branches()`` (how to run its body and head densely,
    see :mod:`napari_histoexpr.models.dense`), ``read_centres``/``compute_centres`` (patch mode) and
    may override ``scale_output()`` (e.g. undo z-scoring). Branch bodies are modules
    (:class:`~napari_histoexpr.models.quantize.NormalisedBody`) so that :meth:`set_precision` can run
    int8 copies of them.
    """

    #: ``auto`` or ``int8`` (see :mod:`napari_histoexpr.models.quantize`)
    precision: str = "auto"
    _int8: dict | None = None  # (slide path, level-0 shape) -> int8 bodies
    _int8_lock = threading.Lock()  # one calibration at a time (the view's and the spots' workers)

    def set_precision(self, precision: str, mode: str = "dense") -> None:
        """Run dense predictions in ``precision`` from now on (a named error if the device or mode
        cannot); ``int8`` bodies are calibrated on each slide when it is first predicted."""
        from .quantize import check_precision

        self.precision = check_precision(precision, self.device, mode)

    def branches_for(self, pyr, mask: tuple | None = None) -> list:
        """:meth:`dense_branches` as they run on ``pyr``: with precision ``int8``, each body replaced by
        its int8 copy calibrated on windows of ``pyr``'s tissue (computed once per slide, kept for the
        last two slides; ``mask``: the slide's ``(tissue mask, downsample)`` if already made), run in
        the int8 body's larger blocks."""
        from dataclasses import replace

        branches = self.dense_branches()
        if self.precision != "int8":
            return branches
        from .quantize import INT8_BLOCK_FEATS, calibration_windows, quantize_body

        key = (pyr.path, pyr.level0_shape)
        with self._int8_lock:
            cache = self._int8 = self._int8 if self._int8 is not None else {}
            if key not in cache:
                bodies = [quantize_body(br.body, calibration_windows(pyr, br.px / br.window_um * pyr.world_mpp,
                                                                     transform=self.patch_transform(), mask=mask))
                          for br in branches]
                while len(cache) >= 2:
                    cache.pop(next(iter(cache)))
                cache[key] = bodies
            bodies = cache[key]
        return [replace(br, body=b, block_feats=INT8_BLOCK_FEATS) for br, b in zip(branches, bodies)]

    def patch_transform(self):
        """The stain normalisation the model was trained with (``meta["stain_norm"]``: a Macenko
        target), or ``None``."""
        stain = (getattr(self, "meta", None) or {}).get("stain_norm")
        if not stain:
            return None
        if getattr(self, "_stain_transform", None) is None:
            from ..data.patches import macenko_normaliser

            self._stain_transform = macenko_normaliser(stain)
        return self._stain_transform

    def scale_output(self, y: np.ndarray) -> np.ndarray:
        return y

    # -- patch mode -------------------------------------------------------------------------------
    def predict_centres(self, pyr, centres: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return self.compute_centres(self.read_centres(pyr, centres), batch_size)

    # -- dense mode -------------------------------------------------------------------------------
    def dense_step_um(self, requested_um: float) -> float:
        return dense_step_um(self.dense_branches(), requested_um)

    def read_cells(self, pyr, x0: float, y0: float, rows: int, cols: int, step_l0: float, cells=None):
        """The regions :meth:`compute_cells` needs for a grid of cells (I/O only)."""

        return read_cells(pyr, self.branches_for(pyr), x0, y0, rows, cols, step_l0, self.patch_transform(),
                          cells=cells)

    def dense_job(self, pyr, x0: float, y0: float, rows: int, cols: int, step_l0: float, cells=None, first=None):
        """A :class:`~napari_histoexpr.models.dense.DenseJob` for a grid of cells: computed block by
        block, the windows of the cells in ``first`` (``(row0, row1, col0, col1)``) first, each cell
        released when its window is done."""

        return DenseJob(pyr, self.branches_for(pyr), x0, y0, rows, cols, step_l0, self.device, cells, first,
                        self.patch_transform(), self.scale_output)

    def compute_cells(self, regions) -> np.ndarray:
        return self.scale_output(compute_cells(regions, self.device))

    def predict_cells(self, pyr, x0: float, y0: float, rows: int, cols: int, step_l0: float,
                      cells=None) -> np.ndarray:
        """``(rows, cols, outputs)`` on a regular grid, one backbone pass per region."""
        return self.compute_cells(self.read_cells(pyr, x0, y0, rows, cols, step_l0, cells))

    def features_centres_dense(self, pyr, centres: np.ndarray) -> np.ndarray:
        """``(N, C)`` pooled features (what the head reads) at arbitrary centres, from the region's
        feature map as dense predictions read them (a single-branch model)."""
        from dataclasses import replace

        branches = [replace(b, head=lambda f: f) for b in self.branches_for(pyr)]
        return dense_at_centres(pyr, branches, centres, self.device, self.patch_transform())

    def predict_centres_dense(self, pyr, centres: np.ndarray) -> np.ndarray:
        """``(N, outputs)`` at arbitrary centres (e.g. spots), from the region's feature map."""

        return self.scale_output(dense_at_centres(pyr, self.branches_for(pyr), centres, self.device,
                                                  self.patch_transform()))
