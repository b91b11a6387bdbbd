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

from ..errors import BarcodeJoinError

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


def join_ids(ids_counts: pd.Index, ids_pos: pd.Index, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Positions in both indexes of the shared ids; raise when the join is empty or poor."""
    ids_counts = pd.Index(ids_counts.astype(str))
    ids_pos = pd.Index(ids_pos.astype(str))
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
