"""Dense segmentation of a slide and Dice: against spot labels (CLI) and against drawn regions (GUI)."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import numpy as np

from ..infer.grid import Raster
from ..infer.region import RegionPredictor


def dice_scores(pred: np.ndarray, true: np.ndarray, classes: list[str], valid: np.ndarray | None = None,
                skip: tuple[int, ...] = ()) -> dict:
    """Per-class Dice ``2|P∩T| / (|P| + |T|)`` over the ``valid`` elements (class indices).

    Scored classes are those present in the truth (``skip`` excluded): a class the user did not
    annotate has no Dice, but predicting it inside annotated regions lowers the annotated classes'
    Dice. ``mean_dice`` is the mean over scored classes; classes only predicted are listed in
    ``predicted_only``.
    """
    pred, true = np.asarray(pred).ravel(), np.asarray(true).ravel()
    if valid is not None:
        v = np.asarray(valid).ravel().astype(bool)
        pred, true = pred[v], true[v]
    per, only = {}, []
    for c, name in enumerate(classes):
        if c in skip:
            continue
        p, t = pred == c, true == c
        if not t.any():
            if p.any():
                only.append(name)
            continue
        per[name] = float(2 * (p & t).sum() / (p.sum() + t.sum()))
    return {"per_class": per, "mean_dice": float(np.mean(list(per.values()))) if per else float("nan"),
            "predicted_only": only}


def segment_region(model, pyr, stride_um: float | None = None, box=None, cancelled=lambda: False,
                   predictor: RegionPredictor | None = None, tile_cells: int = 16, mode: str = "dense",
                   precision: str = "auto") -> Generator[dict, None, tuple]:
    """Class probabilities on the tiles of ``box`` (level-0 y0, x0, y1, x1; whole slide if None).

    Reuses ``predictor`` (and its tile cache) when it is for this model and slide; otherwise builds
    one and announces it with a first ``{"stage": "ready", "predictor", "raster"}`` event. Then one
    ``tile`` event per tile with its ``values`` and ``labels``. Returns ``(predictor, raster)``;
    ``raster.data`` is ``(classes, rows, cols)``, NaN off tissue.
    """
    rp = predictor
    if (rp is None or rp.pyr is not pyr or rp.model is not model or rp.requested_mode != mode
            or rp.requested_precision != precision):
        rp = RegionPredictor(model, pyr, stride_um or min(model.windows) / 2, tile_cells=tile_cells, mode=mode,
                             precision=precision)
    ras = Raster(rp.grid, model.classes)
    if rp is not predictor:
        yield {"stage": "ready", "predictor": rp, "raster": ras}
    h, w = pyr.level0_shape
    tiles = rp.view_tiles(box or (0, 0, h, w))
    for k, (t, v) in enumerate(rp.run(tiles, cancelled)):
        ras.put(t, v)
        yield {"stage": "tile", "done": k + 1, "total": len(tiles), "tile": t, "values": v, "labels": label_map(v)}
    cells = model.smooth_cells(rp.grid.stride * pyr.world_mpp)
    if cells > 1 and not cancelled():
        ras.data[:] = smooth_probabilities(ras.data, cells)
        yield {"stage": "smoothed", "cells": cells, "labels": label_map(ras.data),
               "msg": f"class probabilities averaged over {cells} x {cells} neighbouring cells"}
    return rp, ras


def smooth_probabilities(probs: np.ndarray, cells: int) -> np.ndarray:
    """Spatial regularisation of a class map: each cell's probabilities become the mean over the
    ``cells x cells`` neighbourhood of predicted (finite) cells; cells never predicted stay NaN."""
    from scipy.ndimage import uniform_filter

    fin = np.isfinite(probs[0])
    if cells <= 1 or not fin.any():
        return probs
    w = uniform_filter(fin.astype(np.float64), cells, mode="constant")
    out = np.stack([uniform_filter(np.where(fin, p, 0.0).astype(np.float64), cells, mode="constant") for p in probs])
    out = (out / np.maximum(w, 1e-12)).astype(np.float32)
    out[:, ~fin] = np.nan
    return out


def label_map(probs: np.ndarray) -> np.ndarray:
    """Argmax class per cell of ``(classes, rows, cols)`` probabilities; cells never predicted (NaN,
    off tissue) get the background class 0."""
    d = probs
    fin = np.isfinite(d[0])
    lab = np.where(fin, np.nanargmax(np.where(np.isfinite(d), d, -1), axis=0), 0)
    return lab.astype(np.int32)


def spot_majority(labels: np.ndarray, stride: float, xy: np.ndarray, radius_px: float, n_classes: int) -> np.ndarray:
    """Each spot's class: the majority of predicted cells whose centres lie within its disk."""
    rows, cols = labels.shape
    out = np.zeros(len(xy), np.int32)
    r = max(radius_px, stride * 0.5)
    for k, (x, y) in enumerate(xy):
        c0, c1 = max(0, int((x - r) / stride)), min(cols - 1, int((x + r) / stride))
        r0, r1 = max(0, int((y - r) / stride)), min(rows - 1, int((y + r) / stride))
        cc, rr = np.meshgrid(np.arange(c0, c1 + 1), np.arange(r0, r1 + 1))
        inside = ((cc + 0.5) * stride - x) ** 2 + ((rr + 0.5) * stride - y) ** 2 <= r * r
        vals = labels[rr[inside], cc[inside]] if inside.any() else labels[min(rows - 1, int(y / stride)),
                                                                           min(cols - 1, int(x / stride))][None]
        out[k] = np.bincount(vals, minlength=n_classes).argmax()
    return out


def save_map(path: Path, pyr, labels: np.ndarray, classes: list[str], stride: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    thumb, _ = pyr.thumbnail(800)
    cmap = ListedColormap(["#00000000"] + list(plt.get_cmap("tab10").colors[: max(1, len(classes) - 1)]))
    fig, axes = plt.subplots(1, 2, figsize=(10, 5), dpi=100)
    axes[0].imshow(thumb)
    axes[0].set_title("H&E")
    axes[1].imshow(thumb)
    ds = pyr.level0_shape[1] / thumb.shape[1]  # level-0 px per thumbnail px
    axes[1].imshow(labels, cmap=cmap, vmin=0, vmax=len(classes) - 1, alpha=0.55, interpolation="nearest",
                   extent=(0, labels.shape[1] * stride / ds, labels.shape[0] * stride / ds, 0))
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i)) for i in range(1, len(classes))]
    axes[1].legend(handles, classes[1:], fontsize=7, loc="lower right")
    axes[1].set_title("predicted classes")
    for a in axes:
        a.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
