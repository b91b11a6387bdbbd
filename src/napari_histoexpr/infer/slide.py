"""Whole-slide prediction: every tissue tile of a slide -> chunked zarr (+ multiscale) and an .h5ad.

Output folder::

    OUT/prediction.zarr/   group attrs["histoexpr_prediction"] = genes, stride, origin, mpp, model, slide
        0/  (genes, rows, cols) float32, NaN off tissue; 1/, 2/ ... 2x2-mean levels for display
        done/ (tile_rows, tile_cols) uint8: tiles already written (resume skips them)
        uncertainty/ (genes, rows, cols) expected absolute error of each prediction (a calibrated model)
        distance/ (rows, cols) each cell's distance to the training spots (1: like a training section)
    OUT/prediction.h5ad    one row per tissue cell: X = predictions, obsm["spatial"] = level-0 (x, y),
                           layers["uncertainty"] and obs["distance"] (a calibrated model)
    OUT/summary.json       ("patches": tissue cells predicted; "mode": dense or patch; a calibrated
                           model's "ood_score", "ood_percentile", "outside", "ood_message")

The loader never starves the model: a thread pool reads each tile's block of native slide tiles
once and cuts its patches (decoders release the GIL) while the model runs on the previous tiles, and
a writer thread writes the finished tiles meanwhile.
An interrupted run continues where it stopped (``resume``, the default).
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import HistoExprError
from ..files import atomic_write_h5ad, atomic_write_json
from ..io.prediction_store import PREDICTION_ATTR as ATTR
from ..io.slides import open_slide
from ..models.trust import ood_summary
from .grid import Grid
from .region import RegionPredictor


def _attrs(model, pyr, grid: Grid) -> dict:
    return {"genes": model.genes, "stride_px": grid.stride, "rows": grid.rows, "cols": grid.cols,
            "tile_cells": grid.tile_cells, "world_mpp": pyr.world_mpp, "mpp": pyr.mpp,
            "level0_shape": list(pyr.level0_shape), "slide": str(pyr.path),
            "model": model.meta.get("weights_sha256"), "window_um": model.window_um,
            "uncertainty": bool(getattr(model, "uncertainty", False)),
            "values": "predicted log1p(counts / total * 1e4)",
            "origin_note": "cell (i, j) is centred at level-0 ((i + 0.5) * stride_px, (j + 0.5) * stride_px)"}


def _open_store(path: Path, attrs: dict, grid: Grid, resume: bool):
    import zarr

    if path.exists() and resume:
        g = zarr.open_group(str(path), mode="a")
        old = dict(g.attrs).get(ATTR)
        if old is not None:
            keys = ("genes", "stride_px", "rows", "cols", "tile_cells", "model", "slide", "mode", "precision",
                    "uncertainty")
            old = {"precision": "auto", "uncertainty": False, **old}  # written before int8 / uncertainty existed
            if any(old.get(k) != attrs.get(k) for k in keys):
                raise HistoExprError(f"{path} holds a prediction with another model, slide, stride, mode, "
                                     "precision or uncertainty setting; use another --out or --no-resume")
            return g
    g = zarr.open_group(str(path), mode="w")
    t = grid.tile_cells
    g.create_array("0", shape=(len(attrs["genes"]), grid.rows, grid.cols), chunks=(1, t * 4, t * 4),
                   dtype="float32", fill_value=np.nan)
    if attrs.get("uncertainty"):
        g.create_array("uncertainty", shape=(len(attrs["genes"]), grid.rows, grid.cols), chunks=(1, t * 4, t * 4),
                       dtype="float32", fill_value=np.nan)
        g.create_array("distance", shape=(grid.rows, grid.cols), chunks=(t * 4, t * 4), dtype="float32",
                       fill_value=np.nan)
    g.create_array("done", shape=(grid.tile_rows, grid.tile_cols), chunks=(256, 256), dtype="uint8", fill_value=0)
    g.attrs[ATTR] = dict(attrs, complete=False)
    return g


def _pyramid(g, n_genes: int) -> int:
    """Write 2x2 nan-mean levels ``1``, ``2``, … until the raster is small; returns the level count."""
    lvl, src = 0, g["0"]
    while max(src.shape[1:]) > 256:
        h, w = (src.shape[1] + 1) // 2, (src.shape[2] + 1) // 2
        name = str(lvl + 1)
        if name in g:
            del g[name]
        dst = g.create_array(name, shape=(n_genes, h, w), chunks=(1, 256, 256), dtype="float32",
                             fill_value=np.nan)
        for k in range(n_genes):
            a = src[k]
            pad = np.full((2 * h, 2 * w), np.nan, np.float32)
            pad[:a.shape[0], :a.shape[1]] = a
            blocks = pad.reshape(h, 2, w, 2)
            with np.errstate(invalid="ignore"):
                cnt = np.isfinite(blocks).sum((1, 3))
                s = np.nansum(blocks, (1, 3))
                dst[k] = np.where(cnt > 0, s / np.maximum(cnt, 1), np.nan)
        src, lvl = dst, lvl + 1
    return lvl + 1


def predict_slide_steps(model, slide, out_dir, stride_um: float | None = None, tile_cells: int = 32,
                        workers: int | None = None, batch_size: int = 256, resume: bool = True, mode: str = "dense",
                        precision: str = "auto", uncertainty: bool = True) -> Generator[dict, None, dict]:
    """Predict every tissue tile; yields progress events, returns a summary dict.

    ``uncertainty`` (with a calibrated model): each cell's uncertainty and distance are written too,
    and the slide's out-of-distribution score (:mod:`..models.trust`) goes into the summary.

    ``mode="dense"`` runs the backbone once per tile region (:mod:`.dense`); ``"patch"`` predicts
    every cell's window on its own. Reader threads read the next tiles while the model runs.
    ``precision`` (dense mode): ``auto`` or ``int8`` (:mod:`..models.quantize`).

    ``workers`` reader threads (default: 1 on a CPU, where reading shares the cores with the model
    and more threads only oversubscribe them; 4 on a GPU).
    ``model`` is an :class:`~napari_histoexpr.models.expression.ExpressionModel` or a model folder;
    ``slide`` a path or an open :class:`~napari_histoexpr.io.slides.SlidePyramid`.
    """
    import anndata as ad
    import pandas as pd

    from ..models.expression import ExpressionModel

    if not hasattr(model, "predict"):
        model = ExpressionModel.load(model)
    model = model.with_uncertainty(uncertainty and model.trust is not None)  # the caller's model is left as it is
    pyr = open_slide(slide) if isinstance(slide, (str, os.PathLike)) else slide
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rp = RegionPredictor(model, pyr, stride_um, tile_cells=tile_cells, cache_bytes=0, batch_size=batch_size,
                         mode=mode, precision=precision)
    grid = rp.grid
    attrs = dict(_attrs(model, pyr, grid), mode=rp.mode, precision=rp.precision)
    g = _open_store(out / "prediction.zarr", attrs, grid, resume)
    done = g["done"][:]
    tissue = rp.tiles_tissue(np.arange(grid.tile_rows), np.arange(grid.tile_cols)) > 0
    tiles = [(int(i), int(j)) for i, j in zip(*np.nonzero(tissue))]
    todo = [t for t in tiles if not done[t]]
    yield {"stage": "plan", "msg": f"{len(tiles)} tissue tiles ({len(tiles) - len(todo)} already done), "
           f"grid {grid.rows} x {grid.cols} cells of {grid.stride * pyr.world_mpp:.1f} µm",
           "total": len(todo)}

    if workers is None:
        workers = 1 if model.device.type == "cpu" else 4
    arr = g["0"]

    n_genes = len(model.genes)

    def write(ti, tj, vals):  # in the writer thread: values, then the done flag (a crash re-does this tile)
        rs, cs = grid.tile_slices(ti, tj)
        arr[:, rs, cs] = vals[:n_genes]
        if model.uncertainty:
            g["uncertainty"][:, rs, cs] = vals[n_genes:2 * n_genes]
            g["distance"][rs, cs] = vals[2 * n_genes]
        g["done"][ti, tj] = 1

    t0 = time.perf_counter()
    n_patches, t_model = 0, 0.0
    # reader threads read the next tiles, and one writer thread writes the last ones (zarr's partial chunk
    # writes: ~0.3 s a tile of 250 genes) while the model runs
    with ThreadPoolExecutor(max(1, workers)) as pool, ThreadPoolExecutor(1) as writer:
        pending = [(t, pool.submit(rp.read_band, [t])) for t in todo[: 2 * max(1, workers)]]
        nxt, writes = len(pending), []
        for k in range(len(todo)):
            (ti, tj), fut = pending.pop(0)
            if nxt < len(todo):
                pending.append((todo[nxt], pool.submit(rp.read_band, [todo[nxt]])))
                nxt += 1
            read = fut.result()
            tm = time.perf_counter()
            ((_, vals),) = rp.predict_band([(ti, tj)], read)
            t_model += time.perf_counter() - tm
            n_patches += int(read[3].sum())
            while writes and (len(writes) > 1 or writes[0].done()):
                writes.pop(0).result()  # at most two tiles in flight; a failed write stops the run
            writes.append(writer.submit(write, ti, tj, vals))
            yield {"stage": "tile", "done": k + 1, "total": len(todo), "patches": n_patches}
        for w in writes:
            w.result()
    elapsed = time.perf_counter() - t0
    yield {"stage": "pyramid", "msg": "writing display levels"}
    n_levels = _pyramid(g, len(model.genes))
    # per-cell table
    full = arr[:]
    rows, cols = np.nonzero(np.isfinite(full[0]))
    centres = np.stack([(cols + 0.5) * grid.stride, (rows + 0.5) * grid.stride], axis=1)
    table = ad.AnnData(X=full[:, rows, cols].T.astype(np.float32),
                       obs=pd.DataFrame({"row": rows, "col": cols},
                                        index=[f"r{r}_c{c}" for r, c in zip(rows, cols)]),
                       var=pd.DataFrame(index=model.genes))
    table.obsm["spatial"] = centres
    ood = None
    if model.uncertainty:
        table.layers["uncertainty"] = g["uncertainty"][:][:, rows, cols].T.astype(np.float32)
        table.obs["distance"] = g["distance"][:][rows, cols].astype(np.float32)
        ood = ood_summary(table.obs["distance"].to_numpy(), model.trust.info)
        if ood["outside"]:
            yield {"stage": "warning", "msg": f"{Path(str(pyr.path)).name}: {ood['message']}"}
    table.uns["histoexpr"] = {k: v for k, v in attrs.items() if v is not None and k != "genes"}
    atomic_write_h5ad(out / "prediction.h5ad", table)
    g.attrs[ATTR] = dict(attrs, complete=True, levels=n_levels)
    summary = {"slide": str(pyr.path), "tiles": len(tiles), "tiles_computed": len(todo),
               "cells": int(len(rows)), "patches": n_patches, "mode": rp.mode, "precision": rp.precision,
               "seconds": elapsed,
               "patches_per_s": n_patches / elapsed if elapsed > 0 and n_patches else None,
               "model_seconds": t_model, "device": str(model.device), "levels": n_levels,
               "zarr": str(out / "prediction.zarr"), "h5ad": str(out / "prediction.h5ad")}
    if ood is not None:
        summary.update(ood_score=ood["ood_score"], ood_percentile=ood["ood_percentile"], outside=ood["outside"],
                       ood_message=ood["message"])
    atomic_write_json(out / "summary.json", summary)
    yield {"stage": "done", "msg": f"wrote {out}"}
    return summary
