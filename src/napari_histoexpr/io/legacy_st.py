"""Legacy Spatial Transcriptomics (ST): a spots x genes counts TSV (ids ``XxY``) and a ``*_selection.tsv``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import SpotDataError
from .spotdata import ST_PITCH_UM, ST_SPOT_UM, join_ids, spot_anndata


def estimate_st_pitch_px(sel: pd.DataFrame) -> float:
    """Pixels between neighbouring ST spots, from a fit of pixel position on array position."""
    ax = sel["new_x"] if "new_x" in sel else sel["x"]
    ay = sel["new_y"] if "new_y" in sel else sel["y"]
    slopes = []
    for a, p in ((ax, sel["pixel_x"]), (ay, sel["pixel_y"])):
        a = np.asarray(a, float)
        p = np.asarray(p, float)
        if np.ptp(a) > 0:
            slopes.append(abs(np.polyfit(a, p, 1)[0]))
    if not slopes:
        raise SpotDataError("cannot estimate the ST spot pitch: all spots share one array position")
    return float(np.mean(slopes))


def read_legacy_st(counts: str | os.PathLike, selection: str | os.PathLike,
                   mpp: float | None = None, selected_only: bool = True):
    """Read legacy ST counts (spots x genes TSV, ids ``XxY``) + a ``*_selection.tsv`` spot file."""
    counts, selection = Path(counts), Path(selection)
    for p in (counts, selection):
        if not p.exists():
            raise SpotDataError(f"file not found: {p}")
    sel = pd.read_csv(selection, sep="\t")
    need = {"x", "y", "pixel_x", "pixel_y"}
    if not need <= set(sel.columns):
        raise SpotDataError(f"{selection.name}: needs columns {sorted(need)}, found {list(sel.columns)}")
    if selected_only and "selected" in sel:
        sel = sel[sel["selected"] == 1]
    sel.index = [f"{int(x)}x{int(y)}" for x, y in zip(sel["x"], sel["y"])]
    df = pd.read_csv(counts, sep="\t", index_col=0)
    df.index = df.index.astype(str)
    ic, ip = join_ids(df.index, sel.index, f"{counts.name} + {selection.name}")
    df = df.iloc[ic]
    sel = sel.iloc[ip]
    pitch = estimate_st_pitch_px(sel)
    if mpp is None:
        mpp, src = ST_PITCH_UM / pitch, "estimated from the 200 µm ST spot pitch"
    else:
        src = "given"
    obs = pd.DataFrame({"array_x": sel["x"].to_numpy(), "array_y": sel["y"].to_numpy()},
                       index=df.index)
    var = pd.DataFrame(index=df.columns.astype(str))
    X = sp.csr_matrix(df.to_numpy(dtype=np.float32))
    xy = sel[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    info = {
        "platform": "st",
        "source": str(counts),
        "spot_diameter_px": pitch * ST_SPOT_UM / ST_PITCH_UM,
        "pitch_px": pitch,
        "mpp": float(mpp),
        "mpp_source": src,
    }
    return spot_anndata(X, obs, var, xy, info)


def guess_st_counts(selection: Path) -> Path | None:
    """HER2ST layout: ``spots/C2_selection.tsv`` -> ``counts/C2.tsv.gz``."""
    stem = selection.name.split("_selection")[0]
    for folder in (selection.parent, selection.parent.parent / "counts"):
        for name in (f"{stem}.tsv.gz", f"{stem}.tsv", f"{stem}_counts.tsv.gz", f"{stem}_counts.tsv"):
            if (folder / name).exists() and (folder / name) != selection:
                return folder / name
    return None
