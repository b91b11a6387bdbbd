"""Measured spatial-transcriptomics spots as AnnData.

Every reader returns an :class:`anndata.AnnData` with

* ``X``: raw counts (CSR, float32), ``obs_names`` the spot ids, ``var_names`` unique gene names
  (``var["gene_ids"]`` keeps the original ids where the format has them);
* ``obsm["spatial"]``: spot centres as level-0 pixel ``(x, y)`` of the image they were aligned to;
* ``uns["histoexpr"]``: ``spot_diameter_px``, ``mpp`` (µm/px or ``None``), ``mpp_source``,
  ``platform`` and ``source`` path.

Visium folders also get scanpy's ``uns["spatial"][library_id]`` (images + scalefactors) so the
result works with ``scanpy.pl.spatial``.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import (
    BarcodeJoinError,
    MissingScalefactorsError,
    SpotDataError,
    SpotsOutsideImageError,
    UnknownGeneError,
)

VISIUM_SPOT_UM = 55.0  # Visium spot diameter
VISIUM_PITCH_UM = 100.0
ST_SPOT_UM = 100.0  # legacy ST spot diameter
ST_PITCH_UM = 200.0  # legacy ST centre-to-centre distance
VALUE_MODES = ("raw", "log1p", "normalised")


# -------------------------------------------------------------------------------------------------
# helpers
# -------------------------------------------------------------------------------------------------
def _anndata(X, obs: pd.DataFrame, var: pd.DataFrame, spatial_xy: np.ndarray, info: dict):
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


def _join(ids_counts: pd.Index, ids_pos: pd.Index, what: str) -> tuple[np.ndarray, np.ndarray]:
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


# -------------------------------------------------------------------------------------------------
# 10x Visium
# -------------------------------------------------------------------------------------------------
def _read_10x_h5(path: Path):
    """Read a Cell Ranger / Space Ranger feature-barcode HDF5 (v3 and v2 layouts).

    Written directly with h5py so files without the ``library_ids`` attribute (on which
    ``scanpy.read_visium`` fails) still read.
    """
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise SpotDataError(f"cannot read {path.name}: not an HDF5 file ({e})") from e
    with f:
        if "matrix" in f:
            g = f["matrix"]
            feats = g["features"]
            names = [x.decode() for x in feats["name"][:]]
            ids = [x.decode() for x in feats["id"][:]]
            ftype = ([x.decode() for x in feats["feature_type"][:]]
                     if "feature_type" in feats else ["Gene Expression"] * len(ids))
        else:  # v2: one group per genome
            groups = [k for k in f.keys() if isinstance(f[k], h5py.Group)]
            if not groups:
                raise SpotDataError(f"{path.name}: no 'matrix' group; not a 10x feature-barcode file")
            g = f[groups[0]]
            names = [x.decode() for x in g["gene_names"][:]]
            ids = [x.decode() for x in g["genes"][:]]
            ftype = ["Gene Expression"] * len(ids)
        n_feat, n_bc = (int(v) for v in g["shape"][:])
        mat = sp.csc_matrix((g["data"][:], g["indices"][:], g["indptr"][:]), shape=(n_feat, n_bc))
        barcodes = [x.decode() for x in g["barcodes"][:]]
    X = mat.T.tocsr()
    var = pd.DataFrame({"gene_ids": ids, "feature_types": ftype}, index=names)
    keep = var["feature_types"].to_numpy() == "Gene Expression"
    if keep.any() and not keep.all():
        X, var = X[:, keep], var.loc[keep]
    return X, pd.Index(barcodes), var


def _read_10x_mtx(folder: Path):
    from scipy.io import mmread

    def find(*names):
        for n in names:
            for suffix in ("", ".gz"):
                p = folder / (n + suffix)
                if p.exists():
                    return p
        return None

    mtx, bcs = find("matrix.mtx"), find("barcodes.tsv")
    feats = find("features.tsv", "genes.tsv")
    if mtx is None or bcs is None or feats is None:
        raise SpotDataError(f"{folder}: needs matrix.mtx(.gz), barcodes.tsv(.gz) and features.tsv(.gz)")
    X = sp.csr_matrix(mmread(str(mtx))).T.tocsr()
    barcodes = pd.read_csv(bcs, header=None, sep="\t")[0].astype(str)
    f = pd.read_csv(feats, header=None, sep="\t")
    ids = f[0].astype(str).tolist()
    names = f[1].astype(str).tolist() if f.shape[1] > 1 else ids
    ftype = f[2].astype(str).tolist() if f.shape[1] > 2 else ["Gene Expression"] * len(ids)
    var = pd.DataFrame({"gene_ids": ids, "feature_types": ftype}, index=names)
    keep = var["feature_types"].to_numpy() == "Gene Expression"
    if keep.any() and not keep.all():
        X, var = X[:, keep], var.loc[keep]
    return X, pd.Index(barcodes), var


_POS_COLS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres",
             "pxl_col_in_fullres"]


def _read_positions(spatial: Path) -> pd.DataFrame:
    for name in ("tissue_positions.parquet", "tissue_positions.csv", "tissue_positions_list.csv"):
        p = spatial / name
        if not p.exists():
            continue
        if p.suffix == ".parquet":
            df = pd.read_parquet(p)
        else:
            first = p.open().readline()
            has_header = "barcode" in first
            df = pd.read_csv(p, header=0 if has_header else None)
            if not has_header:
                if df.shape[1] != 6:
                    raise SpotDataError(f"{p.name}: expected 6 columns, found {df.shape[1]}")
                df.columns = _POS_COLS
        missing = set(_POS_COLS) - set(df.columns)
        if missing:
            raise SpotDataError(f"{p.name}: missing columns {sorted(missing)}")
        return df.set_index("barcode")
    raise SpotDataError(
        f"{spatial}: no tissue_positions.parquet, tissue_positions.csv or tissue_positions_list.csv"
    )


def visium_folder(path: str | os.PathLike) -> Path:
    """The Space Ranger ``outs`` folder for ``path`` (the folder itself, its ``outs/``, or a file in it)."""
    p = Path(path)
    if p.is_file():
        p = p.parent
    if (p / "outs" / "spatial").is_dir():
        p = p / "outs"
    if p.name == "spatial" and not (p / "spatial").is_dir():
        p = p.parent
    return p


def is_visium_folder(path: str | os.PathLike) -> bool:
    p = Path(path)
    if not p.is_dir():
        return False
    p = visium_folder(p)
    return (p / "spatial").is_dir() and (
        (p / "filtered_feature_bc_matrix.h5").exists() or (p / "filtered_feature_bc_matrix").is_dir()
        or (p / "raw_feature_bc_matrix.h5").exists()
    )


def read_scalefactors(spatial: Path) -> dict:
    p = spatial / "scalefactors_json.json"
    if not p.exists():
        raise MissingScalefactorsError(
            f"{p} is missing: Space Ranger writes it next to the tissue images; it gives the spot "
            "diameter and image scale factors"
        )
    try:
        sf = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise MissingScalefactorsError(f"{p.name} is not valid JSON ({e})") from e
    if "spot_diameter_fullres" not in sf:
        raise MissingScalefactorsError(f"{p.name} has no 'spot_diameter_fullres'")
    return sf


def read_visium(path: str | os.PathLike, library_id: str | None = None,
                load_images: bool = True, in_tissue_only: bool = True):
    """Read a Space Ranger 1.x/2.x ``outs`` folder."""
    outs = visium_folder(path)
    spatial = outs / "spatial"
    if not spatial.is_dir():
        raise SpotDataError(f"{outs}: no 'spatial' folder; not a Space Ranger outs folder")
    sf = read_scalefactors(spatial)
    if (outs / "filtered_feature_bc_matrix.h5").exists():
        X, barcodes, var = _read_10x_h5(outs / "filtered_feature_bc_matrix.h5")
    elif (outs / "filtered_feature_bc_matrix").is_dir():
        X, barcodes, var = _read_10x_mtx(outs / "filtered_feature_bc_matrix")
    elif (outs / "raw_feature_bc_matrix.h5").exists():
        X, barcodes, var = _read_10x_h5(outs / "raw_feature_bc_matrix.h5")
    else:
        raise SpotDataError(f"{outs}: no filtered_feature_bc_matrix(.h5) found")
    pos = _read_positions(spatial)
    pos.index = pos.index.astype(str)
    try:
        ic, ip = _join(barcodes, pos.index, "Visium")
    except BarcodeJoinError:
        # tolerate a '-1' GEM-well suffix on one side only
        strip = lambda idx: pd.Index([b.rsplit("-", 1)[0] for b in idx])  # noqa: E731
        ic, ip = _join(strip(barcodes), strip(pos.index), "Visium")
    pos = pos.iloc[ip]
    X = X[ic]
    obs = pos[["in_tissue", "array_row", "array_col"]].copy()
    obs.index = barcodes[ic]
    xy = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64)
    if in_tissue_only and (obs["in_tissue"] == 1).any():
        m = (obs["in_tissue"] == 1).to_numpy()
        X, obs, xy = X[m], obs.loc[m], xy[m]
    diam = float(sf["spot_diameter_fullres"])
    lib = library_id or outs.parent.name if outs.name == "outs" else (library_id or outs.name)
    info = {
        "platform": "visium",
        "source": str(outs),
        "spot_diameter_px": diam,
        "mpp": VISIUM_SPOT_UM / diam,
        "mpp_source": "estimated from the 55 µm spot diameter",
        "library_id": lib,
    }
    adata = _anndata(X, obs, var, xy, info)
    images = {}
    if load_images:
        from PIL import Image

        for key in ("hires", "lowres"):
            p = spatial / f"tissue_{key}_image.png"
            if p.exists():
                with Image.open(p) as im:
                    images[key] = np.asarray(im.convert("RGB"))
    adata.uns["spatial"] = {lib: {"images": images, "scalefactors": sf}}
    return adata


def visium_image(adata):
    """The best tissue image of a Visium AnnData as a :class:`SlidePyramid` in full-res pixels.

    Space Ranger keeps only reduced images (hires ~2000 px, lowres 600 px); the pyramid's first level
    has downsample ``1/scalef`` so spots (full-res px) overlay it exactly. A blank placeholder image
    is skipped.
    """
    from .slides import pyramid_from_array

    lib, entry = next(iter(adata.uns["spatial"].items()))
    sf = entry["scalefactors"]
    info = adata.uns["histoexpr"]
    for key in ("hires", "lowres"):
        img = entry["images"].get(key)
        if img is None or img.size == 0 or int(img.max()) == int(img.min()):
            continue
        scalef = float(sf[f"tissue_{key}_scalef"])
        return pyramid_from_array(
            img, path=os.path.join(info.get("source", lib), f"spatial/tissue_{key}_image.png"),
            mpp=info.get("mpp"), mpp_source=info.get("mpp_source"), backend=f"visium:{key}",
            base_downsample=1.0 / scalef,
        )
    raise SpotDataError(f"{lib}: no usable tissue image (hires/lowres missing or blank)")


# -------------------------------------------------------------------------------------------------
# legacy Spatial Transcriptomics (ST)
# -------------------------------------------------------------------------------------------------
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
    ic, ip = _join(df.index, sel.index, f"{counts.name} + {selection.name}")
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
    return _anndata(X, obs, var, xy, info)


# -------------------------------------------------------------------------------------------------
# h5ad, clusters, dispatcher
# -------------------------------------------------------------------------------------------------
def read_h5ad(path: str | os.PathLike):
    import anndata as ad

    try:
        adata = ad.read_h5ad(path)
    except Exception as e:
        raise SpotDataError(f"cannot read {Path(path).name}: {e}") from e
    if "spatial" not in adata.obsm:
        raise SpotDataError(f"{Path(path).name}: no obsm['spatial'] with spot coordinates")
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
        info["spot_diameter_px"] = 0.5 * _nearest_neighbour_distance(xy)
    info.setdefault("platform", "h5ad")
    info.setdefault("source", str(path))
    adata.uns["histoexpr"] = info
    if "total_counts" not in adata.obs:
        adata.obs["total_counts"] = np.asarray(adata.X.sum(axis=1)).ravel()
    return adata


def _nearest_neighbour_distance(xy: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    if len(xy) < 2:
        return 1.0
    d, _ = cKDTree(xy).query(xy, k=2)
    return float(np.median(d[:, 1]))


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
               mpp: float | None = None):
    """Read spots from a Space Ranger folder, an ``.h5ad`` or a legacy ST selection TSV (+ counts)."""
    p = Path(path)
    if not p.exists():
        raise SpotDataError(f"spot data not found: {p}")
    if p.is_dir() or p.name in ("filtered_feature_bc_matrix.h5", "scalefactors_json.json"):
        adata = read_visium(p)
    elif p.suffix == ".h5ad":
        adata = read_h5ad(p)
    elif p.name.endswith((".tsv", ".tsv.gz", ".csv")):
        if counts is None:
            guess = _guess_st_counts(p)
            if guess is None:
                raise SpotDataError(f"{p.name}: a legacy ST spot file needs its counts TSV (--counts)")
            counts = guess
        adata = read_legacy_st(counts, p, mpp=mpp)
    else:
        raise SpotDataError(f"unsupported spot data: {p.name} (Space Ranger folder, .h5ad or ST TSV)")
    if mpp is not None:
        info = adata.uns["histoexpr"]
        info["mpp"], info["mpp_source"] = float(mpp), "given"
    return adata


def _guess_st_counts(selection: Path) -> Path | None:
    """HER2ST layout: ``spots/C2_selection.tsv`` -> ``counts/C2.tsv.gz``."""
    stem = selection.name.split("_selection")[0]
    for folder in (selection.parent, selection.parent.parent / "counts"):
        for name in (f"{stem}.tsv.gz", f"{stem}.tsv", f"{stem}_counts.tsv.gz", f"{stem}_counts.tsv"):
            if (folder / name).exists() and (folder / name) != selection:
                return folder / name
    return None


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


# -------------------------------------------------------------------------------------------------
# values
# -------------------------------------------------------------------------------------------------
def find_gene(adata, gene: str) -> str:
    """Exact, then case-insensitive match of ``gene``; :class:`UnknownGeneError` otherwise."""
    names = adata.var_names
    if gene in names:
        return gene
    lower = {n.lower(): n for n in names}
    if gene.lower() in lower:
        return lower[gene.lower()]
    if "gene_ids" in adata.var and gene in set(adata.var["gene_ids"].astype(str)):
        return str(adata.var_names[adata.var["gene_ids"].astype(str) == gene][0])
    close = difflib.get_close_matches(gene.upper(), [n.upper() for n in names], n=3, cutoff=0.6)
    upper = {n.upper(): n for n in names}
    raise UnknownGeneError(gene, [upper[c] for c in close])


def gene_values(adata, gene: str, mode: str = "raw", target_sum: float = 1e4) -> np.ndarray:
    """Per-spot values of ``gene``: ``raw`` counts, ``log1p`` counts, or ``normalised``
    (counts per ``target_sum`` then log1p, as ``scanpy.pp.normalize_total`` + ``log1p``)."""
    if mode not in VALUE_MODES:
        raise ValueError(f"mode must be one of {VALUE_MODES}, not {mode!r}")
    g = find_gene(adata, gene)
    col = adata[:, g].X
    v = np.asarray(col.todense() if sp.issparse(col) else col, dtype=np.float64).ravel()
    if mode == "log1p":
        return np.log1p(v)
    if mode == "normalised":
        return log1p_normalised(adata, [g], target_sum)[:, 0].astype(np.float64)
    return v


def log1p_normalised(adata, genes: list[str], target_sum: float = 1e4) -> np.ndarray:
    """``(spots, genes)`` log1p of counts per ``target_sum`` (totals over all genes of the spot)."""
    X = adata.X
    tot = np.asarray(X.sum(axis=1)).ravel().astype(np.float64)
    tot[tot == 0] = 1.0  # an empty spot stays 0
    sub = X[:, adata.var_names.get_indexer(genes)]
    sub = sub.toarray() if sp.issparse(sub) else np.asarray(sub)
    return np.log1p(sub / tot[:, None] * target_sum).astype(np.float32)


def shared_genes(genes: list[str], adata) -> list[str]:
    """``genes`` (in their order) that ``adata`` measures."""
    have = set(map(str, adata.var_names))
    return [g for g in genes if g in have]


def percentile_limits(values: np.ndarray, low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (0.0, 1.0)
    lo, hi = np.percentile(v, [low, high])
    if hi <= lo:
        hi = lo + (1.0 if lo == 0 else abs(lo) * 1e-3)
    return (float(lo), float(hi))


def spots_layer_data(adata, gene: str | None = None, mode: str = "log1p",
                     mpp: float | None = None, percentiles: tuple[float, float] = (1.0, 99.0),
                     name: str | None = None, colormap: str = "viridis") -> tuple:
    """Spots as a napari Points LayerData tuple in µm: true spot size, features for hover."""
    info = adata.uns.get("histoexpr", {})
    mpp = float(mpp or info.get("mpp") or 1.0)
    xy = np.asarray(adata.obsm["spatial"], float)
    data = xy[:, ::-1] * mpp  # (row, col) = (y, x)
    diameter_um = float(info.get("spot_diameter_px", 1.0)) * mpp
    features = pd.DataFrame({"spot": adata.obs_names.to_numpy(dtype=str)})
    for col in ("cluster", "in_tissue"):
        if col in adata.obs:
            features[col] = adata.obs[col].to_numpy()
    kwargs = {
        "name": name or "spots",
        "size": diameter_um,
        "border_width": 0,
        "opacity": 0.85,
        "features": features,
        "units": "µm",
        "metadata": {"histoexpr": {"kind": "spots", "mpp": mpp, "source": info.get("source")}},
    }
    if gene is not None:
        g = find_gene(adata, gene)
        values = gene_values(adata, g, mode)
        features["value"] = values
        kwargs["features"] = features
        kwargs["face_color"] = "value"
        kwargs["face_colormap"] = colormap
        kwargs["face_contrast_limits"] = percentile_limits(values, *percentiles)
        kwargs["name"] = name or f"spots: {g} ({mode})"
        kwargs["metadata"]["histoexpr"].update({"gene": g, "mode": mode})
    else:
        kwargs["face_color"] = "#ffcc00"
    return (data, kwargs, "points")


def top_genes(adata, n: int = 50) -> list[str]:
    """Genes with the highest mean count (useful defaults for pickers)."""
    means = np.asarray(adata.X.mean(axis=0)).ravel()
    order = np.argsort(-means)[:n]
    return [str(adata.var_names[i]) for i in order]
