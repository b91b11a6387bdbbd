"""Predicting a model's maps tile by tile over any region of a slide (headless; the live view, whole-slide
prediction and the segmenter drive it).

A view request is turned into the tiles of the slide's :class:`~napari_histoexpr.infer.grid.Grid` it
touches (background tiles skipped with the tissue mask), ordered from the centre out, and computed
(in dense mode as one :class:`~napari_histoexpr.models.dense.DenseJob` over their rectangle); every
tile is kept in a :class:`~napari_histoexpr.infer.tile_cache.TileCache`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator

import numpy as np

from ..data.patches import sample_mask, tissue_fraction_map, tissue_mask
from ..errors import HistoExprError
from ..models.dense import grid_geometry
from ..utils import release_free_memory
from .grid import Grid, Raster
from .tile_cache import TileCache

MODES = ("dense", "patch")
#: the largest feature map (in feature cells, ~2 KB each for resnet18) one dense job of the live view
#: keeps: a view at zoom 1 is ~60 x 60; a zoomed-out view is cut into bands of tile rows
MAX_JOB_FEATS = 160 * 160


def int8_runs(model) -> bool:
    """Whether ``model`` can run int8 (a dense model on a CPU with quantised kernels)."""
    from ..models.quantize import int8_unavailable

    return hasattr(model, "set_precision") and int8_unavailable(model.device) is None


class RegionPredictor:
    """Tile predictions of one :class:`~napari_histoexpr.models.protocol.MapModel` on one slide,
    cached; background tiles are skipped.

    ``mode="dense"`` (default) runs the backbone once per tile region and pools its feature map per
    cell (:mod:`.dense`); the grid step is then snapped to a whole number of feature cells.
    ``mode="patch"`` cuts and predicts every cell's window on its own (the exact reference).
    ``precision`` (dense mode): ``auto`` or ``int8`` (see :mod:`..models.quantize`); it is set
    on the model, and an int8 body is calibrated on this slide here; ``int8`` where it cannot run (a GPU,
    patch mode) gives ``auto`` (:attr:`precision` says which ran).
    """

    def __init__(self, model, pyr, stride_um: float | None = None, tile_cells: int = 16,
                 cache_bytes: int = 256 * 2**20, batch_size: int = 256, min_tissue: float = 0.05,
                 mode: str = "dense", precision: str = "auto"):
        if mode not in MODES:
            raise HistoExprError(f"unknown prediction mode {mode!r}; use dense or patch")
        self.model, self.pyr, self.mode, self.requested_mode = model, pyr, mode, mode
        #: the output channels when built (a model's uncertainty switched on or off needs a new predictor)
        self.channels = list(model.outputs)
        requested = float(stride_um or getattr(model, "default_step_um", None) or model.window_um / 2)
        self.requested_stride_um = requested
        if mode == "dense" and not all(b.exact for b in model.dense_branches()):
            mode = self.mode = "patch"  # windows of a fractional number of feature cells: no exact pooling
        self.stride_um = model.dense_step_um(requested) if mode == "dense" else requested
        # a model that reads its maps in blocks (a ViT's token tiles) gets grid tiles of one block each
        self.grid = Grid.for_slide(pyr, self.stride_um, int(getattr(model, "grid_tile_cells", None) or tile_cells))
        if mode == "dense" and abs(self.grid.stride * pyr.world_mpp - self.stride_um) > 1e-6:
            self.mode = "patch"  # a giant slide's grid was coarsened to bound the raster: no exact pooling
        self.cache = TileCache(cache_bytes)
        self.batch_size = batch_size
        self.mask, self.mask_ds = tissue_mask(pyr)
        # int8 is a CPU dense-mode option: elsewhere (a grid that fell back to patch mode, a GPU) the model
        # runs in its float precision, as dense falls back to patch above
        self.requested_precision = precision
        runs = precision != "int8" or (self.mode == "dense" and int8_runs(model))
        self.precision = precision if runs else "auto"
        if self.mode == "dense" and hasattr(model, "set_precision"):
            model.set_precision(self.precision)
            model.branches_for(pyr, (self.mask, self.mask_ds))  # int8: calibrate on this slide now, not in a view
        self._cell_fraction = None  # the tissue fraction of a cell's window, per mask cell (made once)
        # the mask's integral image: any rectangle's tissue in 4 lookups (made here, in the panel's worker:
        # ~0.1 s for a 2048 x 2048 mask, too long for the Qt thread)
        self._mask_sum = np.pad(self.mask.astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        self.min_tissue = min_tissue
        self._lock = threading.Lock()  # one model call at a time

    @property
    def outputs(self) -> list[str]:
        """The model's output channels (genes, or a segmenter's classes)."""
        return self.model.outputs

    def tile_tissue(self, ti: int, tj: int) -> float:
        return float(self.tiles_tissue(np.array([ti]), np.array([tj]))[0, 0])

    def tiles_tissue(self, ti: np.ndarray, tj: np.ndarray) -> np.ndarray:
        """Tissue fraction of the mask under each tile of rows ``ti`` x columns ``tj`` (an outer
        product, vectorised: a zoomed-out view has thousands of tiles)."""
        t, f = self.grid.tile_cells, self.grid.stride / self.mask_ds
        h, w = self.mask.shape

        def span(idx, n, size):  # the mask rows (cols) under tiles idx: at least one, clipped to the mask
            lo = np.minimum((idx * t * f).astype(np.int64), size)
            hi = np.minimum(np.maximum(lo + 1, np.ceil(np.minimum((idx + 1) * t, n) * f).astype(np.int64)), size)
            return lo, hi

        (y0, y1), (x0, x1) = span(np.asarray(ti), self.grid.rows, h), span(np.asarray(tj), self.grid.cols, w)
        S = self._mask_sum
        total = S[y1][:, x1] - S[y0][:, x1] - S[y1][:, x0] + S[y0][:, x0]
        area = (y1 - y0)[:, None] * (x1 - x0)[None, :]
        return np.where(area > 0, total / np.maximum(area, 1), 0.0)

    def cell_tissue(self, centres: np.ndarray) -> np.ndarray:
        """Tissue fraction of the central half of each cell's window."""

        if self._cell_fraction is None:
            radius = self.model.window_um / 2 / self.pyr.world_mpp / 2
            self._cell_fraction = tissue_fraction_map(self.mask, self.mask_ds, radius)
        return sample_mask(self._cell_fraction, self.mask_ds, centres)

    def predict_tile(self, ti: int, tj: int) -> np.ndarray:
        """``(genes, rows, cols)`` float32 predictions of a tile (NaN off tissue); cached."""
        hit = self.cache.get((ti, tj))
        return hit if hit is not None else self.predict_band([(ti, tj)])[0][1]

    def view_tiles(self, box) -> list[tuple[int, int]]:
        """The tiles of :meth:`Grid.tiles_in_box` with tissue, nearest to the box's centre first."""
        tiles = self.grid.tiles_in_box(*box)
        if not tiles:
            return []
        i0, j0 = min(t[0] for t in tiles), min(t[1] for t in tiles)
        i1, j1 = max(t[0] for t in tiles), max(t[1] for t in tiles)
        tissue = self.tiles_tissue(np.arange(i0, i1 + 1), np.arange(j0, j1 + 1)) > 0
        return [t for t in tiles if tissue[t[0] - i0, t[1] - j0]]

    def run(self, tiles: list[tuple[int, int]], cancelled: Callable[[], bool] = lambda: False
            ) -> Generator[tuple[tuple[int, int], np.ndarray], None, int]:
        """Predict ``tiles`` in order, yielding ``((ti, tj), array)``; stops early when cancelled.

        In dense mode the cached tiles come first; the others are computed together in one
        :class:`~napari_histoexpr.models.dense.DenseJob` (bands of tile rows for a zoomed-out view,
        :meth:`job_groups`): the feature map of their rectangle block by block, each feature cell
        once, the windows of the first tile (the view centre) first, every tile yielded as soon as
        its cells are done; the next block is read while the model runs the current one."""
        try:
            return (yield from self._run(tiles, cancelled))
        finally:
            release_free_memory()

    def _run(self, tiles, cancelled):
        done = 0
        if self.mode != "dense":
            for t in tiles:
                if cancelled():
                    break
                yield t, self.predict_tile(*t)
                done += 1
            return done
        missing = []
        for t in tiles:  # cached tiles at once
            hit = self.cache.get(t) if t in self.cache else None
            if hit is None:
                missing.append(t)
                continue
            if cancelled():
                return done
            yield t, hit
            done += 1
        for group in self.job_groups(missing):
            if cancelled():
                break
            for t, v in self._run_job(group, cancelled):
                if cancelled():  # between tiles (a finished tile stays cached)
                    return done
                yield t, v
                done += 1
        return done

    def job_groups(self, tiles: list[tuple[int, int]], max_feats: int = MAX_JOB_FEATS) -> list[list[tuple[int, int]]]:
        """``tiles`` (the first at the view centre) grouped into dense jobs: all together when their
        bounding rectangle's feature map has at most ``max_feats`` feature cells (a view), else bands
        of whole tile rows within that bound, the band of the first tile first, then nearest to it."""
        if not tiles:
            return []
        rows = sorted({t[0] for t in tiles})
        cols = {t[1] for t in tiles}

        k = max(grid_geometry(self.pyr, b, self.grid.stride)[1] for b in self.model.dense_branches())
        span = self.grid.tile_cells * k  # feature cells per tile side
        width = (max(cols) - min(cols) + 1) * span
        per = max(1, int(max_feats // max(width * span, 1)))  # tile rows per job
        if len(rows) <= per:
            return [list(tiles)]
        ci = tiles[0][0]
        lo = max(min(rows), min(ci - (per - 1) // 2, max(rows) - per + 1))  # the band through the centre
        starts = sorted({lo} | set(range(lo - per, min(rows) - per, -per)) | set(range(lo + per, max(rows) + 1, per)))
        groups = {s: [t for t in tiles if s <= t[0] < s + per] for s in starts}
        return [groups[s] for s in sorted(groups, key=lambda s: abs(s + (per - 1) / 2 - ci)) if groups[s]]

    def _run_job(self, group: list[tuple[int, int]], cancelled):
        """Compute ``group``'s tiles in one :class:`~napari_histoexpr.models.dense.DenseJob`, its first
        tile's windows first; each tile is yielded (and cached) as soon as its cells are done."""
        from concurrent.futures import ThreadPoolExecutor

        (r0, c0), rows, cols, centres, on = self.band_cells(group)
        vals = np.full((len(self.outputs), rows, cols), np.nan, np.float32)
        t = self.grid.tile_cells
        ti0, tj0 = r0 // t, c0 // t  # the band's rectangle starts at a tile's first cell
        nti, ntj = -(-rows // t), -(-cols // t)
        rank = np.full((nti, ntj), -1)  # each tile's place in ``group`` (-1: not in it), pending ones
        for n, (i, j) in enumerate(group):
            rank[i - ti0, j - tj0] = n

        def finished(done_cells):
            """The group's tiles whose wanted cells are all done now (in the group's order), cached."""
            missing = np.zeros((nti * t, ntj * t), bool)
            missing[:rows, :cols] = on & ~done_cells
            ready = (rank >= 0) & ~missing.reshape(nti, t, ntj, t).any(axis=(1, 3))
            for n in np.sort(rank[ready]):
                i, j = group[n]
                rs, cs = self.grid.tile_slices(i, j)
                tile = np.ascontiguousarray(vals[:, rs.start - r0:rs.stop - r0, cs.start - c0:cs.stop - c0])
                self.cache.put((i, j), tile)
                rank[i - ti0, j - tj0] = -1
                yield (i, j), tile

        if not on.any():
            yield from finished(on)
            return
        job = self.plan_job(group, ((r0, c0), rows, cols, centres, on))
        items = job.items
        reader = ThreadPoolExecutor(1)  # reads the next block while the model runs this one
        try:
            fut = reader.submit(job.read, items[0]) if items else None
            for n, item in enumerate(items):
                if cancelled():
                    break
                img = fut.result()
                nxt = items[n + 1] if n + 1 < len(items) else None
                if nxt is not None and n > 0:
                    fut = reader.submit(job.read, nxt)
                with self._lock:
                    new, out = job.compute(item, img)
                if nxt is not None and n == 0:  # the view centre: nothing competed with it for the CPU
                    fut = reader.submit(job.read, nxt)
                if new.any():  # tiles without tissue cells go out with the first ones (not before them)
                    vals[:, new] = out.T
                    yield from finished(job.done)
        finally:  # also when the generator is closed early: never wait here for a read in flight
            reader.shutdown(wait=False, cancel_futures=True)

    def plan_job(self, group: list[tuple[int, int]], band: tuple | None = None):
        """The :class:`~napari_histoexpr.models.dense.DenseJob` of a group of tiles (not run): the
        windows of its first tile first. ``band``: the group's :meth:`band_cells`, if made."""
        (r0, c0), rows, cols, centres, on = band or self.band_cells(group)
        rs, cs = self.grid.tile_slices(*group[0])
        return self.model.dense_job(self.pyr, *centres[0], rows, cols, self.grid.stride, on,
                                    (rs.start - r0, rs.stop - r0, cs.start - c0, cs.stop - c0))

    def band_cells(self, band: list[tuple[int, int]]) -> tuple:
        """The bounding rectangle of ``band``'s cells: ``((r0, c0), rows, cols, centres, on)`` with the
        level-0 centres of its cells (row-major) and the cells wanted (tissue cells of the band's tiles)."""
        r0 = self.grid.tile_slices(min(t[0] for t in band), 0)[0].start
        r1 = self.grid.tile_slices(max(t[0] for t in band), 0)[0].stop
        c0 = self.grid.tile_slices(0, min(t[1] for t in band))[1].start
        c1 = self.grid.tile_slices(0, max(t[1] for t in band))[1].stop
        rows, cols = r1 - r0, c1 - c0
        yy, xx = np.meshgrid((np.arange(r0, r1) + 0.5) * self.grid.stride,
                             (np.arange(c0, c1) + 0.5) * self.grid.stride, indexing="ij")
        centres = np.stack([xx.ravel(), yy.ravel()], axis=1)
        wanted = np.zeros((rows, cols), bool)
        for t in band:
            rs, cs = self.grid.tile_slices(*t)
            wanted[rs.start - r0:rs.stop - r0, cs.start - c0:cs.stop - c0] = True
        on = wanted & (self.cell_tissue(centres) >= self.min_tissue).reshape(rows, cols)
        return (r0, c0), rows, cols, centres, on

    def read_band(self, band: list[tuple[int, int]]) -> tuple:
        """The I/O half of :meth:`predict_band` (run in reader threads): the band's bounding
        rectangle of cells, the cells wanted and what the model reads for them (dense: the input
        regions; patch: the windows)."""
        (r0, c0), rows, cols, centres, on = self.band_cells(band)
        read = None
        if on.any():
            read = (self.model.read_cells(self.pyr, *centres[0], rows, cols, self.grid.stride, on)
                    if self.mode == "dense" else self.model.read_centres(self.pyr, centres[on.ravel()]))
        return (r0, c0), rows, cols, on, read

    def predict_band(self, band: list[tuple[int, int]], read: tuple | None = None
                     ) -> list[tuple[tuple[int, int], np.ndarray]]:
        """Predictions of a band of tiles (in dense mode one call over their rectangle); each tile
        is cached."""
        (r0, c0), rows, cols, on, data = read or self.read_band(band)
        vals = np.full((len(self.outputs), rows, cols), np.nan, np.float32)
        if data is not None:
            with self._lock:
                if self.mode == "dense":
                    pred = self.model.compute_cells(data)[on]
                else:
                    pred = self.model.compute_centres(data, self.batch_size)
            vals[:, on] = pred.T
        out = []
        for t in band:
            rs, cs = self.grid.tile_slices(*t)
            tile = np.ascontiguousarray(vals[:, rs.start - r0:rs.stop - r0, cs.start - c0:cs.stop - c0])
            self.cache.put(t, tile)
            out.append((t, tile))
        return out


def predictor_with_raster(model, pyr, stride_um: float | None = None, **kw) -> tuple[RegionPredictor, Raster]:
    """A :class:`RegionPredictor` and an empty :class:`Raster` of its grid for all the model's outputs
    (built together in a viewer's worker: the raster of a large slide is megabytes to fill)."""
    pred = RegionPredictor(model, pyr, stride_um, **kw)
    return pred, Raster(pred.grid, model.outputs)
