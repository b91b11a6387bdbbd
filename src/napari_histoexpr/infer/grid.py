"""The global prediction grid of a slide and its raster.

The slide is covered by a **global prediction grid**: cell ``(i, j)`` is centred at level-0
``((i + 0.5) * stride, (j + 0.5) * stride)``. Cells are grouped in square **tiles** of
``tile_cells`` x ``tile_cells``, the unit of work and of caching, so results are reused whatever the
view. A :class:`Raster` holds every output channel's grid (NaN where not predicted yet).

Coordinates: the grid raster is shown with ``scale = stride * mpp`` and ``translate`` putting cell
centres at their level-0 centres (:func:`grid_layer_geometry`), exactly aligned with the slide.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    stride: float  # level-0 px between cell centres
    rows: int
    cols: int
    tile_cells: int = 16

    @classmethod
    def for_slide(cls, pyr, stride_um: float, tile_cells: int = 16, max_cells: int = 8192) -> "Grid":
        stride = stride_um / pyr.world_mpp
        h, w = pyr.level0_shape
        if max(h, w) / stride > max_cells:  # keep the raster bounded for any slide
            stride = max(h, w) / max_cells
        return cls(float(stride), int(np.ceil(h / stride)), int(np.ceil(w / stride)), tile_cells)

    @property
    def tile_rows(self) -> int:
        return int(np.ceil(self.rows / self.tile_cells))

    @property
    def tile_cols(self) -> int:
        return int(np.ceil(self.cols / self.tile_cells))

    def tile_slices(self, ti: int, tj: int) -> tuple[slice, slice]:
        t = self.tile_cells
        return slice(ti * t, min((ti + 1) * t, self.rows)), slice(tj * t, min((tj + 1) * t, self.cols))

    def cell_centres(self, ti: int, tj: int) -> np.ndarray:
        """Level-0 ``(x, y)`` centres of a tile's cells, row-major."""
        rs, cs = self.tile_slices(ti, tj)
        yy, xx = np.meshgrid((np.arange(rs.start, rs.stop) + 0.5) * self.stride,
                             (np.arange(cs.start, cs.stop) + 0.5) * self.stride, indexing="ij")
        return np.stack([xx.ravel(), yy.ravel()], axis=1)

    def tiles_in_box(self, y0: float, x0: float, y1: float, x1: float) -> list[tuple[int, int]]:
        """Tiles touching the level-0 box, nearest to its centre first."""
        span = self.stride * self.tile_cells
        i0, i1 = max(0, int(np.floor(y0 / span))), min(self.tile_rows - 1, int(np.floor(y1 / span)))
        j0, j1 = max(0, int(np.floor(x0 / span))), min(self.tile_cols - 1, int(np.floor(x1 / span)))
        if i1 < i0 or j1 < j0:
            return []
        cy, cx = (y0 + y1) / 2 / span - 0.5, (x0 + x1) / 2 / span - 0.5
        tiles = [(i, j) for i in range(i0, i1 + 1) for j in range(j0, j1 + 1)]
        return sorted(tiles, key=lambda t: (t[0] - cy) ** 2 + (t[1] - cx) ** 2)


def grid_layer_geometry(grid: Grid, world_mpp: float) -> dict:
    """``scale``/``translate`` of a grid raster in the µm world (cell centres on their level-0 centres).

    napari puts the centre of data pixel ``i`` at ``translate + i * scale``; a level-0 pixel ``p``
    has its centre at world ``p * mpp`` (slide layer convention), and cell ``i``'s centre is level-0
    ``(i + 0.5) * stride - 0.5``.
    """
    s = grid.stride * world_mpp
    t = (0.5 * grid.stride - 0.5) * world_mpp
    return {"scale": (s, s), "translate": (t, t)}


class Raster:
    """The whole-slide grid raster of each output channel (a model's ``outputs``: genes, or a segmenter's
    classes), NaN where not predicted yet, filled tile by tile."""

    def __init__(self, grid: Grid, names: list[str]):
        self.grid = grid
        self.names = list(names)
        self.data = np.full((len(names), grid.rows, grid.cols), np.nan, np.float32)
        self._views = {g: self.data[i] for i, g in enumerate(self.names)}  # one array per channel: layers keep it

    def put(self, tile: tuple[int, int], values: np.ndarray) -> None:
        rs, cs = self.grid.tile_slices(*tile)
        self.data[:, rs, cs] = values

    def plane(self, name: str) -> np.ndarray:
        """The channel's plane of :attr:`data` (the same array object on every call)."""
        return self._views[name]
