"""Gene-set scores added to a ``histoexpr predict`` output (``--score``), with controls chosen once from the
model's mean training target (:mod:`napari_histoexpr.data.gene_sets`), so the predicted map, the
predicted spots and the measured spots are scored alike.

Written into the output folder:

- ``prediction.zarr/scores`` ``(sets, rows, cols)`` float32, NaN off tissue; group attribute
  ``histoexpr_scores`` = ``{"names": [...], "sets": {name: {genes, missing, controls, source}}}``;
- ``prediction.h5ad``: ``obs["score: NAME"]``;
- ``spots_prediction.h5ad`` (with ``--spots``): ``obs["score: NAME (predicted)"]`` and
  ``obs["score: NAME (measured)"]``;
- ``summary.json`` ``"scores"``: each set's genes, missing genes and controls, and with ``--spots``
  the Pearson r of predicted vs measured scores over the spots (``"r_spots"``; also in
  ``spots_report.json``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..data.gene_sets import GeneSet, SetScore, prepare
from ..files import atomic_write_h5ad, atomic_write_json
from ..io.prediction_store import open_prediction, prediction_group_path

SCORES_ATTR = "histoexpr_scores"


def reference_means(model):
    """The model's mean training target per gene (a pandas Series), from a loaded model or its folder."""
    import pandas as pd

    if isinstance(model, (str, os.PathLike)):
        meta = json.loads((Path(model) / "model.json").read_text())
        return pd.Series(meta["target"]["mean"], index=meta["genes"], dtype=np.float64)
    return pd.Series(np.asarray(model.mean, np.float64), index=list(model.genes))


def _rewrite_h5ad(path: Path, t, columns: dict) -> None:
    """Write ``t`` (read from ``path``) back with ``columns`` added to its obs, atomically."""
    for k, v in columns.items():
        t.obs[k] = np.asarray(v, np.float32)
    atomic_write_h5ad(path, t)


def score_prediction(out_dir, sets: list[GeneSet], means) -> dict:
    """Score every set on a finished prediction (and its spots, when predicted there); returns the
    ``summary.json`` "scores" block written."""
    import anndata as ad
    import zarr

    out = Path(out_dir)
    prepared: list[SetScore] = [prepare(s, means) for s in sets]
    _, attrs = open_prediction(out)
    genes = list(attrs["genes"])
    g = zarr.open_group(str(prediction_group_path(out)), mode="a")
    src = g["0"]
    _, rows, cols = src.shape
    if "scores" in g:
        del g["scores"]
    dst = g.create_array("scores", shape=(len(prepared), rows, cols), chunks=(1, 256, 256), dtype="float32",
                         fill_value=np.nan)
    need = sorted({genes.index(x) for s in prepared for x in s.genes + s.controls})
    names = [genes[i] for i in need]
    step = 256
    for r0 in range(0, rows, step):  # a band of rows at a time: bounded memory on any slide
        block = src[need, r0:r0 + step, :]
        for k, s in enumerate(prepared):
            dst[k, r0:r0 + step, :] = s.of(block, names, axis=0).astype(np.float32)
    block = {s.name: s.describe() for s in prepared}
    g.attrs[SCORES_ATTR] = {"names": [s.name for s in prepared], "sets": block}

    table = out / "prediction.h5ad"
    if table.exists():
        t = ad.read_h5ad(table)
        x = np.asarray(t.X, np.float64)
        _rewrite_h5ad(table, t, {f"score: {s.name}": s.of(x, list(t.var_names)) for s in prepared})
    spots = out / "spots_prediction.h5ad"
    if spots.exists():
        t = ad.read_h5ad(spots)
        have = list(t.var_names)
        cols_ = {}
        for s in prepared:
            use = s.within(have)
            if use is None:
                continue
            p = use.of(np.asarray(t.X, np.float64), have)
            m = use.of(np.asarray(t.layers["measured"], np.float64), have)
            cols_[f"score: {s.name} (predicted)"], cols_[f"score: {s.name} (measured)"] = p, m
            ok = np.isfinite(p) & np.isfinite(m)
            r = float(np.corrcoef(p[ok], m[ok])[0, 1]) if ok.sum() > 2 and p[ok].std() > 0 and m[ok].std() > 0 \
                else None
            block[s.name]["r_spots"] = r
            block[s.name]["n_spots"] = int(ok.sum())
        _rewrite_h5ad(spots, t, cols_)
        rep = out / "spots_report.json"
        if rep.exists():
            d = json.loads(rep.read_text())
            d["scores"] = {k: {"r": v.get("r_spots"), "n_spots": v.get("n_spots")} for k, v in block.items()}
            atomic_write_json(rep, d)
    summ = out / "summary.json"
    if summ.exists():
        d = json.loads(summ.read_text())
        d["scores"] = block
        atomic_write_json(summ, d)
    return block
