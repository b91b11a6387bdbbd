"""10x Visium HD: Space Ranger's ``outs/binned_outputs/square_002um|008um|016um`` folders, each a
Space Ranger-style folder of square bins (``filtered_feature_bc_matrix.h5``,
``spatial/tissue_positions.parquet``, ``spatial/scalefactors_json.json`` with ``microns_per_pixel``
and ``bin_size_um``), read by :func:`napari_histoexpr.io.visium.read_visium` once a bin size is
chosen here.

Bins are far smaller than a model's window (8 µm against 150 µm), so measured-vs-predicted
comparisons sum the bins' counts into non-overlapping squares of the model's window
(:func:`aggregate_bins`) and compare there: the model predicts exactly what such a square holds.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import SpotDataError
from .spotdata import spot_anndata

#: the bin size opened when none is chosen (µm)
DEFAULT_BIN_UM = 8
_BIN_DIR = re.compile(r"^square_(\d{3})um$")


def binned_outputs(path: str | os.PathLike) -> Path | None:
    """The ``binned_outputs`` folder of a Visium HD ``outs`` folder (or its parent, or itself)."""
    p = Path(path)
    for cand in (p, p / "binned_outputs", p / "outs" / "binned_outputs"):
        if cand.name == "binned_outputs" and cand.is_dir():
            return cand
    return None


def available_bins(binned: Path) -> list[int]:
    return sorted(int(m.group(1)) for d in binned.iterdir() if d.is_dir() and (m := _BIN_DIR.match(d.name)))


def nearest_bin(have: list[int], want: float = DEFAULT_BIN_UM) -> int:
    """The bin size of ``have`` nearest ``want`` on a log scale (the larger of two as near)."""
    return min(have, key=lambda b: (abs(np.log(b / want)), -b))


def hd_bin_folder(path: str | os.PathLike, bin_um: float | None = None) -> Path | None:
    """The ``square_XXXum`` folder to read for ``path`` (an HD ``outs`` folder, its parent,
    ``binned_outputs`` or a bin folder itself), or ``None`` if ``path`` is not Visium HD. Without
    ``bin_um``: the default size, or the nearest the run has (:func:`bin_note` says so); a bin size
    asked for that is not there is a :class:`SpotDataError` naming those that are."""
    p = Path(path)
    m = _BIN_DIR.match(p.name)
    if m and p.is_dir():
        if bin_um is not None and int(m.group(1)) != int(bin_um):
            return hd_bin_folder(p.parent, bin_um)
        return p
    binned = binned_outputs(p)
    if binned is None:
        return None
    want = int(bin_um if bin_um is not None else DEFAULT_BIN_UM)
    have = available_bins(binned)
    if want not in have and bin_um is None and have:
        want = nearest_bin(have)
    if want not in have:
        raise SpotDataError(f"{binned}: no {want} µm bins (square_{want:03d}um); this run has "
                            f"{', '.join(f'{b} µm' for b in have) or 'none'}")
    return binned / f"square_{want:03d}um"


def bin_note(path: str | os.PathLike, folder: Path, bin_um: float | None) -> dict:
    """``uns['histoexpr']`` entries saying which bin sizes the run has (``bins_available``) and, when the
    default size was wanted but absent, which one was opened instead (``bin_note``)."""
    have = available_bins(folder.parent)
    out: dict = {"bins_available": [float(b) for b in have]}
    opened = int(_BIN_DIR.match(folder.name).group(1))
    if bin_um is None and not _BIN_DIR.match(Path(path).name) and opened != DEFAULT_BIN_UM:
        out["bin_note"] = (f"this Visium HD run has no {DEFAULT_BIN_UM} µm bins: opened its {opened} µm bins "
                           f"(sizes found: {', '.join(f'{b} µm' for b in have)})")
    return out


def hd_info(sf: dict, folder: Path) -> dict | None:
    """``uns['histoexpr']`` entries of a bin folder from its scalefactors (``None``: not HD)."""
    m = _BIN_DIR.match(folder.name)
    bin_um = sf.get("bin_size_um") or (int(m.group(1)) if m else None)
    if not bin_um:
        return None
    bin_um = float(bin_um)
    if sf.get("microns_per_pixel"):
        mpp, src = float(sf["microns_per_pixel"]), "scalefactors microns_per_pixel"
    else:
        mpp, src = bin_um / float(sf["spot_diameter_fullres"]), "bin size / spot_diameter_fullres"
    if not np.isfinite(mpp) or mpp <= 0:
        raise SpotDataError(f"{folder.name}: microns_per_pixel {sf.get('microns_per_pixel')!r} is not a size")
    return {"platform": "visium_hd", "bin_um": bin_um, "spot_shape": "square",
            "spot_diameter_px": bin_um / mpp, "mpp": mpp, "mpp_source": src}


def aggregate_bins(adata, size_um: float, mpp: float, min_fill: float = 0.5):
    """Sum Visium HD bins into non-overlapping ``size_um`` squares (grid anchored at the level-0
    origin); squares less than ``min_fill`` covered by bins are dropped. Returns an AnnData of the
    squares (counts summed, ``obs['n_bins']``, centres in level-0 px, square size)."""

    info = adata.uns["histoexpr"]
    side = size_um / mpp
    xy = np.asarray(adata.obsm["spatial"], float)
    ij = np.floor(xy / side).astype(np.int64)
    keys, inverse = np.unique(ij, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    n = np.bincount(inverse, minlength=len(keys))
    full = (size_um / float(info["bin_um"])) ** 2
    keep = n >= min_fill * full
    if not keep.any():
        raise SpotDataError(f"no {size_um:g} µm square is at least {min_fill:.0%} covered by "
                            f"{info['bin_um']:g} µm bins")
    S = sp.csr_matrix((np.ones(len(inverse), np.float32), (inverse, np.arange(len(inverse)))),
                      shape=(len(keys), len(inverse)))
    X = (S @ sp.csr_matrix(adata.X))[keep]
    keys, n = keys[keep], n[keep]
    obs = pd.DataFrame({"n_bins": n, "square_col": keys[:, 0], "square_row": keys[:, 1]},
                       index=[f"sq{size_um:g}um_{r}_{c}" for c, r in keys])
    out_info = {k: v for k, v in info.items() if k not in ("spot_diameter_px",)}
    out_info.update(platform="visium_hd", aggregated_um=float(size_um), spot_shape="square",
                    spot_diameter_px=side)
    return spot_anndata(sp.csr_matrix(X, dtype=np.float32), obs, adata.var.copy(), (keys + 0.5) * side, out_info)


def comparison_spots(adata, window_um: float, mpp: float):
    """What a model's predictions are compared with: the spots themselves, or for Visium HD bins
    their sums over squares of the model's window. Returns ``(adata, scale)``, ``scale`` saying which."""
    info = adata.uns.get("histoexpr", {})
    if info.get("platform") != "visium_hd" or info.get("aggregated_um"):
        return adata, "spots"
    agg = aggregate_bins(adata, window_um, mpp)
    return agg, (f"Visium HD {info['bin_um']:g} µm bins summed into {window_um:g} µm squares "
                 f"(the model's window)")
