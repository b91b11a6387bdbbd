"""What the plugin computed, as QuPath objects (see :mod:`napari_histoexpr.io.qupath`, docs/qupath.md):

- measured and predicted expression at the spots, as detections with one measurement per gene
  (``measured: GENE``, ``predicted: GENE``, ``uncertainty: GENE``; log1p of counts per 10k, the
  models' scale);
- a whole-slide prediction's grid, as square detections of the grid cell;
- a segmenter's label map, as one annotation per connected class region, with its holes.

A value that does not exist (a spot off tissue has no prediction) is left out of that object's
measurements, which QuPath reads as missing (NaN).
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import numpy as np

from ..data.gene_values import find_gene, log1p_normalised, top_genes
from ..errors import HistoExprError
from ..io.prediction_store import prediction_group_path
from ..io.qupath import QuPathObject, label_map_objects, point_detections

SPOTS_FILE = "spots_prediction.h5ad"  # histoexpr predict --spots
GRID_FILE = "prediction.h5ad"


def _folder(prediction) -> Path:
    p = prediction_group_path(prediction)
    return p.parent if p.suffix == ".zarr" else p


def _pick(table, genes: list[str] | None) -> list[str]:
    """``genes`` as ``table`` spells them (:func:`find_gene`: a named error with the nearest names), all
    of its genes when None."""
    return [find_gene(table, g) for g in genes] if genes else list(table.var_names)


def _measure(cols: dict, prefix: str, table, genes: list[str], index=None, layer: str | None = None) -> None:
    """Add ``prefix: GENE`` columns from an AnnData's ``X`` (or ``layer``); with ``index``, one row per
    name of it (the rows the table lacks: NaN)."""
    m = table.layers[layer] if layer else table.X
    sub = m[:, table.var_names.get_indexer(genes)]
    x = np.asarray(sub.toarray() if hasattr(sub, "toarray") else sub, float)
    if index is not None:  # rows of the output that the table has (others: missing)
        full = np.full((len(index), len(genes)), np.nan)
        at = table.obs_names.get_indexer(index)
        full[at >= 0] = x[at[at >= 0]]
        x = full
    for k, g in enumerate(genes):
        cols[f"{prefix}: {g}"] = x[:, k]


def spot_objects(adata=None, prediction=None, genes: list[str] | None = None) -> list[QuPathObject]:
    """One detection per spot: measured values (from ``adata``, the measured spots), predicted ones
    (from a ``histoexpr predict --spots`` folder's spots_prediction.h5ad), or both (joined by barcode;
    every spot of ``adata`` is written). Named by barcode; discs of the spot diameter (squares for
    Visium HD bins)."""
    import anndata as ad

    pred = None
    if prediction is not None:
        f = _folder(prediction) / SPOTS_FILE
        if not f.exists():
            raise HistoExprError(f"{_folder(prediction)} has no predictions at spots ({SPOTS_FILE}): run "
                                 "histoexpr predict with --spots, or export the grid (--level grid)")
        pred = ad.read_h5ad(f)
    if adata is None and pred is None:
        raise HistoExprError("spot detections need the measured spots (--spots) or a prediction at spots")
    if adata is not None:
        info = adata.uns.get("histoexpr", {})
        ids, xy = adata.obs_names.to_numpy(dtype=str), np.asarray(adata.obsm["spatial"], float)
        size, square = float(info.get("spot_diameter_px") or 0), info.get("spot_shape") == "square"
    else:
        info = pred.uns.get("histoexpr", {})
        ids, xy = pred.obs_names.to_numpy(dtype=str), np.asarray(pred.obsm["spatial"], float)
        size, square = float(info.get("spot_diameter_px") or 0), bool(info.get("square", False))
        if not size:
            raise HistoExprError("the prediction at spots does not record the spot size: give --spots too")
    if pred is not None:
        genes = _pick(pred, genes)
        if adata is not None:
            genes = [g for g in genes if g in set(adata.var_names)] or genes
    else:
        genes = [find_gene(adata, g) for g in genes] if genes else top_genes(adata, 20)
    cols: dict = {}
    if adata is not None:
        meas = [g for g in genes if g in set(adata.var_names)]
        x = log1p_normalised(adata, meas)
        cols.update({f"measured: {g}": x[:, k] for k, g in enumerate(meas)})
    elif "measured" in pred.layers:
        _measure(cols, "measured", pred, genes, layer="measured")
    if pred is not None:
        _measure(cols, "predicted", pred, genes, ids)
        if "uncertainty" in pred.layers:
            _measure(cols, "uncertainty", pred, genes, ids, layer="uncertainty")
    return point_detections(xy, size, cols, names=ids, square=square, cls="spot")


def grid_objects(prediction, genes: list[str] | None = None) -> list[QuPathObject]:
    """One square detection per predicted tissue cell of a whole-slide prediction (``predicted: GENE``,
    and ``uncertainty: GENE`` when the model was calibrated), side = the grid step."""
    import anndata as ad

    f = _folder(prediction) / GRID_FILE
    if not f.exists():
        raise HistoExprError(f"{_folder(prediction)} is not a finished histoexpr predict output (no {GRID_FILE})")
    t = ad.read_h5ad(f)
    genes = _pick(t, genes)
    cols: dict = {}
    _measure(cols, "predicted", t, genes)
    if "uncertainty" in t.layers:
        _measure(cols, "uncertainty", t, genes, layer="uncertainty")
    if "distance" in t.obs:
        cols["distance"] = t.obs["distance"].to_numpy(float)
    stride = float(t.uns["histoexpr"]["stride_px"])
    return point_detections(np.asarray(t.obsm["spatial"], float), stride, cols, names=t.obs_names, square=True,
                            cls="grid cell")


def segmentation_objects_steps(model, pyr, stride_um: float | None = None, mode: str = "dense",
                               precision: str = "auto", simplify: float = 0.25
                               ) -> Generator[dict, None, list[QuPathObject]]:
    """Segment the whole slide with a segmenter (smoothed over the model's cell, as everywhere) and
    vectorise its label map: one annotation per connected region of each class (background left out),
    with holes, an ``Area µm^2`` and a ``Cells`` measurement."""
    from .maps import label_map, segment_region

    gen = segment_region(model, pyr, stride_um, mode=mode, precision=precision)
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            rp, ras = stop.value
            break
        if ev["stage"] == "tile" and (ev["done"] == ev["total"] or ev["done"] % 8 == 0):
            yield {"stage": "segment", "msg": f"segmented tile {ev['done']}/{ev['total']}"}
    labels = label_map(ras.data)
    objs = label_map_objects(labels, model.classes, rp.grid.stride, skip=(0,), mpp=pyr.world_mpp,
                             simplify=simplify)
    yield {"stage": "vectorised", "msg": f"{len(objs)} class regions"}
    return objs


def spot_prediction_objects(sp, world_mpp: float) -> list[QuPathObject]:
    """One detection per spot of a :class:`~napari_histoexpr.infer.spot_prediction.SpotPrediction` (the
    panel's comparison): ``measured: GENE``, ``predicted: GENE`` (and ``uncertainty: GENE``) for all its
    genes."""
    cols = {f"measured: {g}": sp.meas[:, k] for k, g in enumerate(sp.genes)}
    cols.update({f"predicted: {g}": sp.pred[:, k] for k, g in enumerate(sp.genes)})
    if sp.uncertainty is not None:
        cols.update({f"uncertainty: {g}": sp.uncertainty[:, k] for k, g in enumerate(sp.genes)})
    size = float(sp.spot_um or 0) / world_mpp
    return point_detections(sp.xy, size, cols, names=sp.spot_ids, square=sp.square, cls="spot")


def raster_objects(planes: dict[str, np.ndarray], stride: float, origin=(0.0, 0.0),
                   cls: str = "grid cell") -> list[QuPathObject]:
    """One square detection per grid cell where any plane (``{measurement name: (rows, cols)}``) has a
    value, cell ``(i, j)`` centred at level-0 ``origin + ((j + 0.5) * stride, (i + 0.5) * stride)``."""
    if not planes:
        return []
    arrs = {k: np.asarray(v, float) for k, v in planes.items()}
    rows, cols = np.nonzero(np.any([np.isfinite(a) for a in arrs.values()], axis=0))
    xy = np.stack([origin[0] + (cols + 0.5) * stride, origin[1] + (rows + 0.5) * stride], 1)
    return point_detections(xy, stride, {k: a[rows, cols] for k, a in arrs.items()},
                            names=[f"r{r}_c{c}" for r, c in zip(rows, cols)], square=True, cls=cls)
