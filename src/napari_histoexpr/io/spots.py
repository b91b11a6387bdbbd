"""Measured spatial-transcriptomics spots as AnnData: one entry point, :func:`read_spots`, for a Space
Ranger folder (:mod:`.visium`), an ``.h5ad``, or a legacy ST selection TSV (:mod:`.legacy_st`); the
AnnData layout is described in :mod:`.spotdata`. Expression values (log1p, normalised, gene lookup)
are computed in :mod:`napari_histoexpr.data.gene_values`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import BarcodeJoinError, SpotDataError, SpotsOutsideImageError
from .legacy_st import (
    guess_st_counts,
    looks_like_st_counts,
    read_legacy_st,
    read_st_folder,
    read_st_matrix,
    st_counts_in,
)
from .spotdata import VISIUM_SPOT_UM, nearest_neighbour_distance
from .visium import read_visium


def read_h5ad(path: str | os.PathLike):
    import anndata as ad

    try:
        adata = ad.read_h5ad(path)
    except Exception as e:
        raise SpotDataError(f"cannot read {Path(path).name}: {e}") from e
    if "spatial" not in adata.obsm:
        raise SpotDataError(f"{Path(path).name}: no obsm['spatial'] with spot coordinates")
    if sp.issparse(adata.X):
        try:  # corrupt indices/indptr would crash later sparse operations
            adata.X.check_format(full_check=True)
        except (ValueError, TypeError) as e:
            raise SpotDataError(f"{Path(path).name}: corrupt sparse count matrix ({e})") from e
    try:
        xy = np.asarray(adata.obsm["spatial"], dtype=float)
        ok = xy.ndim == 2 and xy.shape[1] >= 2 and bool(np.isfinite(xy[:, :2]).all())
    except (ValueError, TypeError):
        ok = False
    if not ok:
        raise SpotDataError(f"{Path(path).name}: obsm['spatial'] is not finite (x, y) coordinates")
    info = dict(adata.uns.get("histoexpr", {}))
    if "spot_diameter_px" not in info:
        # scanpy convention: uns['spatial'][lib]['scalefactors']['spot_diameter_fullres']
        for entry in adata.uns.get("spatial", {}).values():
            d = entry.get("scalefactors", {}).get("spot_diameter_fullres")
            if d:
                info.setdefault("spot_diameter_px", float(d))
                info.setdefault("mpp", VISIUM_SPOT_UM / float(d))
                info.setdefault("mpp_source", "estimated from the 55 µm spot diameter")
                break
    if "spot_diameter_px" not in info:
        xy = np.asarray(adata.obsm["spatial"], float)
        info["spot_diameter_px"] = 0.5 * nearest_neighbour_distance(xy)
    info.setdefault("platform", "h5ad")
    info.setdefault("source", str(path))
    adata.uns["histoexpr"] = info
    if "total_counts" not in adata.obs:
        adata.obs["total_counts"] = np.asarray(adata.X.sum(axis=1)).ravel()
    return adata


def read_clusters(adata, path: str | os.PathLike, column: str = "label", key: str = "cluster"):
    """Join per-spot labels (TSV/CSV with a ``label`` column) on the spot id or on ``x``, ``y``."""
    path = Path(path)
    sep = "," if path.name.endswith((".csv", ".csv.gz")) else "\t"
    df = pd.read_csv(path, sep=sep, index_col=0, dtype={column: str})
    if column not in df.columns:
        raise SpotDataError(f"{path.name}: no {column!r} column (found {list(df.columns)})")
    df.index = df.index.astype(str)
    if len(df.index.intersection(adata.obs_names)) == 0 and {"x", "y"} <= set(df.columns):
        df.index = [f"{int(x)}x{int(y)}" for x, y in zip(df["x"], df["y"])]
    shared = adata.obs_names.intersection(df.index)
    if len(shared) == 0:
        raise BarcodeJoinError(f"{path.name}: no spot ids match the spots (e.g. {list(df.index[:3])})")
    labels = df[column].reindex(adata.obs_names)
    adata.obs[key] = pd.Categorical(labels.where(labels.notna(), None))
    return adata


def read_spots(path: str | os.PathLike, counts: str | os.PathLike | None = None,
               mpp: float | None = None, bin_um: float | None = None):
    """Read spots from a Space Ranger folder, an ``.h5ad``, a legacy ST selection TSV (+ counts), a
    legacy ST counts TSV on its own or an ST pipeline folder (:mod:`.legacy_st`). ``bin_um``: the bin
    size of a Visium HD run (default 8 µm)."""
    p = Path(path)
    if not p.exists():
        raise SpotDataError(f"spot data not found: {p}")
    if p.is_dir() and st_counts_in(p):
        adata = read_st_folder(p, mpp=mpp)
    elif p.is_dir() or p.name in ("filtered_feature_bc_matrix.h5", "scalefactors_json.json"):
        adata = read_visium(p, bin_um=bin_um)
    elif p.suffix == ".h5ad":
        adata = read_h5ad(p)
    elif counts is None and looks_like_st_counts(p):
        adata = read_st_matrix(p, mpp=mpp)
    elif p.name.endswith((".tsv", ".tsv.gz", ".csv")):
        if counts is None:
            guess = guess_st_counts(p)
            if guess is None:
                raise SpotDataError(f"{p.name}: a legacy ST spot file needs its counts TSV (--counts)")
            counts = guess
        adata = read_legacy_st(counts, p, mpp=mpp)
    else:
        raise SpotDataError(f"unsupported spot data: {p.name} (Space Ranger folder, .h5ad, ST TSV or ST folder)")
    if mpp is not None:
        info = adata.uns["histoexpr"]
        info["mpp"], info["mpp_source"] = float(mpp), "given"
    return adata


def check_spots_in_image(adata, level0_shape: tuple[int, int], tolerance: float = 0.05) -> int:
    """Raise :class:`SpotsOutsideImageError` if more than ``tolerance`` of spots lie off the slide.

    Returns the number of spots outside (a few at the border are normal).
    """
    h, w = level0_shape
    xy = np.asarray(adata.obsm["spatial"], float)
    out = (xy[:, 0] < 0) | (xy[:, 1] < 0) | (xy[:, 0] >= w) | (xy[:, 1] >= h)
    n = int(out.sum())
    if n > tolerance * len(xy):
        raise SpotsOutsideImageError(
            f"{n} of {len(xy)} spots lie outside the {w} x {h} px image (spot x range "
            f"{xy[:, 0].min():.0f}..{xy[:, 0].max():.0f}, y range {xy[:, 1].min():.0f}.."
            f"{xy[:, 1].max():.0f}): are the spots from another image or resolution?"
        )
    return n
