"""10x Visium: Space Ranger 1.x/2.x ``outs`` folders (HDF5 or MTX matrix, CSV/parquet positions).

Visium folders also get scanpy's ``uns["spatial"][library_id]`` (images + scalefactors) so the
result works with ``scanpy.pl.spatial``.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import BarcodeJoinError, MissingScalefactorsError, NoTissueImageError, SpotDataError
from .slides import pyramid_from_array
from .spotdata import VISIUM_SPOT_UM, join_ids, spot_anndata
from .visium_hd import bin_note, binned_outputs, hd_bin_folder, hd_info


def read_10x_h5(path: Path):
    """``(X, barcodes, var)`` of a Cell Ranger / Space Ranger feature-barcode HDF5 (v3 and v2 layouts),
    read by ``scanpy.read_10x_h5``; a file that is not one, or is corrupt, is a named error."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "matrix" not in f and not any(isinstance(f[k], h5py.Group) for k in f.keys()):
                raise SpotDataError(f"{path.name}: no 'matrix' group; not a 10x feature-barcode file")
    except OSError as e:
        raise SpotDataError(f"cannot read {path.name}: not an HDF5 file ({e})") from e
    return _with_named_errors(f"{path.name}: corrupt or incomplete feature-barcode matrix", lambda: _scanpy_10x(path))


def read_10x_mtx(folder: Path):
    """``(X, barcodes, var)`` of a Matrix Market folder (``matrix.mtx``, ``barcodes.tsv`` and
    ``features.tsv``, or the legacy ``genes.tsv``), read by ``scanpy.read_10x_mtx``."""
    folder = Path(folder)
    v3 = all((folder / n).exists() for n in ("matrix.mtx.gz", "barcodes.tsv.gz", "features.tsv.gz"))
    legacy = all((folder / n).exists() for n in ("matrix.mtx", "barcodes.tsv", "genes.tsv"))
    if not (v3 or legacy):
        raise SpotDataError(f"{folder}: needs matrix.mtx.gz, barcodes.tsv.gz and features.tsv.gz (Cell Ranger 3+) "
                            "or matrix.mtx, barcodes.tsv and genes.tsv (Cell Ranger 2)")
    mtx = "matrix.mtx.gz" if v3 else "matrix.mtx"
    return _with_named_errors(f"{folder.name}/{mtx}: truncated or corrupt Matrix Market folder",
                              lambda: _scanpy_10x(folder))


def _scanpy_10x(path: Path):
    import warnings

    import scanpy as sc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scanpy's notes on non-unique gene names: genes are looked up by name
        if path.is_dir():
            ad = sc.read_10x_mtx(path, var_names="gene_symbols", make_unique=False, gex_only=False)
        else:
            ad = sc.read_10x_h5(path, gex_only=False)
    X = sp.csr_matrix(ad.X)
    X.check_format(full_check=True)  # corrupt indices/indptr would crash later sparse operations
    if X.shape[0] and X.data.size and X.data.min() < 0:
        raise SpotDataError(f"{path.name}: negative counts")
    var = pd.DataFrame({"gene_ids": ad.var["gene_ids"].astype(str).to_numpy(),
                        "feature_types": (ad.var["feature_types"].astype(str).to_numpy()
                                          if "feature_types" in ad.var else ["Gene Expression"] * ad.n_vars)},
                       index=ad.var_names.astype(str))
    keep = var["feature_types"].to_numpy() == "Gene Expression"
    if keep.any() and not keep.all():
        X, var = X[:, keep], var.loc[keep]
    return X, pd.Index(ad.obs_names.astype(str)), var


def _with_named_errors(what: str, read):
    """``read()``, its failures (a truncated, corrupt or incomplete matrix) as a :class:`SpotDataError`
    saying ``what``."""
    try:
        return read()
    except SpotDataError:
        raise
    except (OSError, KeyError, ValueError, TypeError, IndexError, UnicodeDecodeError, OverflowError, EOFError,
            AttributeError, zlib.error, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise SpotDataError(f"{what} ({type(e).__name__}: {str(e)[:200]})") from e


POSITION_COLUMNS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres",
             "pxl_col_in_fullres"]


def read_positions(spatial: Path) -> pd.DataFrame:
    for name in ("tissue_positions.parquet", "tissue_positions.csv", "tissue_positions_list.csv"):
        p = spatial / name
        if not p.exists():
            continue
        has_header = True
        try:
            if p.suffix == ".parquet":
                df = pd.read_parquet(p)
            else:
                with p.open() as f:
                    has_header = "barcode" in f.readline()
                df = pd.read_csv(p, header=0 if has_header else None)
                if not has_header:
                    if df.shape[1] != 6:
                        raise SpotDataError(f"{p.name}: expected 6 columns, found {df.shape[1]}")
                    df.columns = POSITION_COLUMNS
        except SpotDataError:
            raise
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as e:
            raise SpotDataError(f"{p}: malformed spot positions ({str(e).strip().splitlines()[-1]})") from e
        missing = set(POSITION_COLUMNS) - set(df.columns)
        if missing:
            raise SpotDataError(f"{p.name}: missing columns {sorted(missing)}")
        for col in ("pxl_row_in_fullres", "pxl_col_in_fullres"):
            values = pd.to_numeric(df[col], errors="coerce")
            bad = np.flatnonzero(~np.isfinite(values.to_numpy(dtype=float)))
            if len(bad):
                line = int(bad[0]) + (2 if has_header or p.suffix == ".parquet" else 1)
                raise SpotDataError(f"{p}: {len(bad)} spot(s) without a numeric {col} (first at line {line}: "
                                    f"{df[col].iloc[bad[0]]!r})")
            df[col] = values
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


def looks_like_space_ranger(path: str | os.PathLike) -> bool:
    """A folder with Space Ranger's ``spatial/`` (scalefactors or spot positions in it), complete or
    not — reading an incomplete one names what is missing — or a Visium HD run."""

    p = Path(path)
    if not p.is_dir():
        return False
    if binned_outputs(p) is not None:
        return True
    spatial = visium_folder(p) / "spatial"
    return (spatial / "scalefactors_json.json").exists() or any(spatial.glob("tissue_positions*"))


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
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MissingScalefactorsError(f"{p.name} is not valid JSON ({e})") from e
    if not isinstance(sf, dict) or "spot_diameter_fullres" not in sf:
        raise MissingScalefactorsError(f"{p.name} has no 'spot_diameter_fullres'")
    for k in ("spot_diameter_fullres", "tissue_hires_scalef", "tissue_lowres_scalef", "microns_per_pixel",
              "bin_size_um"):
        v = sf.get(k)
        if v is None and k != "spot_diameter_fullres":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v <= 0:
            raise MissingScalefactorsError(f"{p.name}: {k} is {v!r}, not a positive number")
    return sf


def read_visium(path: str | os.PathLike, library_id: str | None = None,
                load_images: bool = True, in_tissue_only: bool = True, bin_um: float | None = None):
    """Read a Space Ranger 1.x/2.x ``outs`` folder, or one bin size of a Visium HD run (``bin_um``;
    default 8 µm, else the nearest size the run has; :mod:`.visium_hd`)."""

    hd = hd_bin_folder(path, bin_um)
    outs = hd if hd is not None else visium_folder(path)
    spatial = outs / "spatial"
    if not spatial.is_dir():
        raise SpotDataError(f"{outs}: no 'spatial' folder; not a Space Ranger outs folder")
    sf = read_scalefactors(spatial)
    if (outs / "filtered_feature_bc_matrix.h5").exists():
        X, barcodes, var = read_10x_h5(outs / "filtered_feature_bc_matrix.h5")
    elif (outs / "filtered_feature_bc_matrix").is_dir():
        X, barcodes, var = read_10x_mtx(outs / "filtered_feature_bc_matrix")
    elif (outs / "raw_feature_bc_matrix.h5").exists():
        X, barcodes, var = read_10x_h5(outs / "raw_feature_bc_matrix.h5")
    else:
        raise SpotDataError(f"{outs}: the count matrix is missing: Space Ranger writes filtered_feature_bc_matrix.h5 "
                            "or a filtered_feature_bc_matrix/ folder (matrix.mtx.gz, barcodes.tsv.gz, "
                            "features.tsv.gz) next to spatial/")
    pos = read_positions(spatial)
    pos.index = pos.index.astype(str)
    try:
        ic, ip = join_ids(barcodes, pos.index, "Visium")
    except BarcodeJoinError:
        # tolerate a '-1' GEM-well suffix on one side only
        strip = lambda idx: pd.Index([b.rsplit("-", 1)[0] for b in idx])  # noqa: E731
        ic, ip = join_ids(strip(barcodes), strip(pos.index), "Visium")
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
    if hd is not None:  # square bins of a known size; microns_per_pixel from Space Ranger
        info.update(hd_info(sf, outs) or {}, **bin_note(path, outs, bin_um))
    adata = spot_anndata(X, obs, var, xy, info)
    images, problems = {}, []
    if load_images:
        from PIL import Image

        for key in ("hires", "lowres"):
            p = spatial / f"tissue_{key}_image.png"
            if p.exists():
                try:
                    with Image.open(p) as im:
                        images[key] = np.asarray(im.convert("RGB"))
                except (OSError, ValueError, SyntaxError):  # empty or corrupt: the other image may do
                    problems.append(f"{p.name} is unreadable")
    adata.uns["spatial"] = {lib: {"images": images, "scalefactors": sf}}
    if problems:
        adata.uns["histoexpr"]["image_problems"] = problems
    return adata


def visium_image(adata):
    """The best tissue image of a Visium AnnData as a :class:`SlidePyramid` in full-res pixels.

    Space Ranger keeps only reduced images (hires ~2000 px, lowres 600 px); the pyramid's first level
    has downsample ``1/scalef`` so spots (full-res px) overlay it exactly. A blank placeholder image
    is skipped.
    """

    lib, entry = next(iter(adata.uns["spatial"].items()))
    sf = entry["scalefactors"]
    info = adata.uns["histoexpr"]
    for key in ("hires", "lowres"):
        img = entry["images"].get(key)
        if img is None or img.size == 0 or int(img.max()) == int(img.min()) or not sf.get(f"tissue_{key}_scalef"):
            continue
        scalef = float(sf[f"tissue_{key}_scalef"])
        return pyramid_from_array(
            img, path=os.path.join(info.get("source", lib), f"spatial/tissue_{key}_image.png"),
            mpp=info.get("mpp"), mpp_source=info.get("mpp_source"), backend=f"visium:{key}",
            base_downsample=1.0 / scalef,
        )
    why = "; ".join(info.get("image_problems", [])) or "hires/lowres missing or blank"
    raise NoTissueImageError(f"{lib}: no usable tissue image ({why}); the spots open without one")
