"""What every spot reader shares: the AnnData layout, joining counts to positions, spot geometry.

Every reader returns an :class:`anndata.AnnData` with

* ``X``: raw counts (CSR, float32), ``obs_names`` the spot ids, ``var_names`` unique gene names
  (``var["gene_ids"]`` keeps the original ids where the format has them);
* ``obsm["spatial"]``: spot centres as level-0 pixel ``(x, y)`` of the image they were aligned to;
* ``uns["histoexpr"]``: ``spot_diameter_px``, ``mpp`` (µm/px or ``None``), ``mpp_source``,
  ``platform`` and ``source`` path.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import BarcodeJoinError, SpotDataError

VISIUM_SPOT_UM = 55.0  # Visium spot diameter
VISIUM_PITCH_UM = 100.0
ST_SPOT_UM = 100.0  # legacy ST spot diameter
ST_PITCH_UM = 200.0  # legacy ST centre-to-centre distance


def spot_anndata(X, obs: pd.DataFrame, var: pd.DataFrame, spatial_xy: np.ndarray, info: dict):
    import anndata as ad

    X = sp.csr_matrix(X, dtype=np.float32)
    obs = obs.copy()
    obs.index = obs.index.astype(str)
    var = var.copy()
    var.index = var.index.astype(str)
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.var_names_make_unique()
    adata.obsm["spatial"] = np.asarray(spatial_xy, dtype=np.float64)
    adata.obs["total_counts"] = np.asarray(X.sum(axis=1)).ravel()
    adata.uns["histoexpr"] = {k: v for k, v in info.items() if v is not None}
    return adata


def read_table(path, **kwargs) -> pd.DataFrame:
    """``pd.read_csv`` whose parser, decoding and decompression errors become a
    :class:`SpotDataError` naming the file."""
    import zlib

    try:
        return pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, EOFError, OSError,
            zlib.error, ValueError) as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise SpotDataError(f"{getattr(path, 'name', path)}: unreadable table ({type(e).__name__}: {msg[:200]})") from e


def numeric_columns(df: pd.DataFrame, cols, where: str) -> pd.DataFrame:
    """``cols`` of ``df`` as finite floats; a :class:`SpotDataError` names the first bad row (line)."""
    out = df.copy()
    for c in cols:
        v = pd.to_numeric(out[c], errors="coerce").to_numpy(dtype=float)
        bad = np.flatnonzero(~np.isfinite(v))
        if len(bad):
            raise SpotDataError(f"{where}: {len(bad)} row(s) without a finite {c} (first at line {bad[0] + 2}: "
                                f"{df[c].iloc[bad[0]]!r})")
        out[c] = v
    return out


def counts_matrix(df: pd.DataFrame, where: str):
    """The counts of a spots x genes table as CSR float32; non-numeric or non-finite cells are named."""
    try:
        X = df.to_numpy(dtype=np.float32)
    except (ValueError, TypeError) as e:
        raise SpotDataError(f"{where}: non-numeric counts ({e})") from e
    if not np.isfinite(X).all():
        raise SpotDataError(f"{where}: counts that are NaN or infinite")
    return sp.csr_matrix(X)


def join_ids(ids_counts: pd.Index, ids_pos: pd.Index, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Positions in both indexes of the shared ids; raise when the join is empty or poor."""
    ids_counts = pd.Index(ids_counts.astype(str))
    ids_pos = pd.Index(ids_pos.astype(str))
    for ids, side in ((ids_counts, "counts"), (ids_pos, "positions")):
        if not ids.is_unique:
            dup = ids[ids.duplicated()].unique()
            raise SpotDataError(f"{what}: {len(dup)} spot id(s) appear more than once in the {side} "
                                f"(e.g. {list(dup[:3])})")
    shared = ids_counts.intersection(ids_pos, sort=False)
    if len(shared) == 0:
        raise BarcodeJoinError(
            f"{what}: none of the {len(ids_counts)} spot ids in the counts match the "
            f"{len(ids_pos)} spot positions (e.g. counts {list(ids_counts[:3])} vs positions "
            f"{list(ids_pos[:3])})"
        )
    missing = ids_counts.difference(ids_pos)
    if len(missing) > 0.5 * len(ids_counts):
        raise BarcodeJoinError(
            f"{what}: {len(missing)} of {len(ids_counts)} spots in the counts have no position "
            f"(e.g. {list(missing[:3])})"
        )
    return ids_counts.get_indexer(shared), ids_pos.get_indexer(shared)


def nearest_neighbour_distance(xy: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    if len(xy) < 2:
        return 1.0
    d, _ = cKDTree(xy).query(xy, k=2)
    return float(np.median(d[:, 1]))
