"""SpatialData (scverse's on-disk format, read by napari-spatialdata and squidpy): export a section —
its slide, spots, measured table and predicted maps — to a ``.zarr`` store, and open a store as a
section. Needs the optional ``spatialdata`` package (``pip install 'napari-histoexpr[spatialdata]'``).

Coordinates. The store's ``global`` coordinate system is in µm. SpatialData puts pixel ``(0, 0)``
over ``[0, 1) x [0, 1)`` (corner convention), this project puts level-0 pixel ``p`` centred at ``p``:
shapes are stored in level-0 pixel-corner coordinates (``p + 0.5``) with a ``Scale(mpp)`` to
``global``, the slide's first level with ``Scale(downsample * mpp)``, a prediction grid of stride
``s`` px with ``Scale(s)``, ``Translation(0.5)``, ``Scale(mpp)``. Reading inverts the same maps.
A store this project did not write is read in the coordinate system ``global`` (else its first):
the largest RGB image, and the shapes (circles or polygons) a table annotates.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import HistoExprError, SpotDataError
from .prediction_store import open_prediction
from .slides import SlidePyramid
from .spotdata import nearest_neighbour_distance, spot_anndata

HINT = "pip install 'napari-histoexpr[spatialdata]'"
ATTR = "napari_histoexpr"
IMAGE, SPOTS, TABLE, PREDICTED = "slide", "spots", "table", "predicted"


def _sd():
    try:
        import spatialdata
    except ImportError as e:
        raise HistoExprError(f"SpatialData support needs the spatialdata package ({HINT}; "
                             f"importing it failed: {e})") from e
    return spatialdata


def is_spatialdata_store(path: str | os.PathLike) -> bool:
    """A zarr group with SpatialData's element folders (images, labels, shapes, points, tables)."""
    p = Path(path)
    if not p.is_dir() or not ((p / "zarr.json").exists() or (p / ".zgroup").exists()):
        return False
    return any((p / k).is_dir() for k in ("images", "labels", "shapes", "points", "tables"))


def _plain(d: dict) -> dict:
    """What AnnData can write of a metadata dict (no None, nested dicts kept)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out[k] = _plain(v)
        elif isinstance(v, (str, int, float, bool, np.integer, np.floating)):
            out[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (str, int, float)) for x in v):
            out[k] = list(v)
    return out


def export_section(pyr, adata, out: str | os.PathLike, prediction: str | os.PathLike | None = None,
                   overwrite: bool = False) -> Path:
    """Write ``pyr`` (slide), ``adata`` (spots + measured counts) and optionally a ``histoexpr
    predict`` output folder to a SpatialData store at ``out``; returns its path."""
    sd = _sd()
    import anndata as ad
    import dask.array as da
    import geopandas as gpd
    import pandas as pd
    from shapely.geometry import Point, box
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Scale

    out = Path(out)
    if out.exists() and not overwrite:
        raise HistoExprError(f"{out} exists; choose a new path or overwrite")
    mpp = pyr.world_mpp
    um = Scale([mpp, mpp], axes=("y", "x"))
    lv0 = da.moveaxis(da.asarray(pyr.levels[0]), -1, 0)  # (c, y, x)
    n_down = max(0, int(np.floor(np.log2(max(lv0.shape[1:]) / 512))))
    ds0 = float(pyr.downsamples[0])
    image = Image2DModel.parse(lv0, dims=("c", "y", "x"), c_coords=["r", "g", "b"],
                               scale_factors=[2] * n_down or None,
                               transformations={"global": Scale([ds0 * mpp, ds0 * mpp], axes=("y", "x"))})
    info = adata.uns.get("histoexpr", {})
    xy = np.asarray(adata.obsm["spatial"], float) + 0.5  # pixel-corner convention
    d = float(info.get("spot_diameter_px") or 1.0)
    ids = np.arange(adata.n_obs)
    if info.get("spot_shape") == "square":
        geom = [box(x - d / 2, y - d / 2, x + d / 2, y + d / 2) for x, y in xy]
        gdf = gpd.GeoDataFrame(geometry=geom, index=ids)
    else:
        gdf = gpd.GeoDataFrame({"radius": np.full(len(xy), d / 2)}, geometry=[Point(x, y) for x, y in xy], index=ids)
    shapes = ShapesModel.parse(gdf, transformations={"global": um})
    table = ad.AnnData(X=adata.X.copy(), obs=adata.obs.copy(), var=adata.var.copy())
    table.obs["spot_id"] = adata.obs_names.astype(str)
    table.obs_names = [str(i) for i in ids]
    table.obs["region"] = pd.Categorical([SPOTS] * len(ids))
    table.obs["instance_id"] = ids
    table.obsm["spatial"] = np.asarray(adata.obsm["spatial"], float)
    table.uns["histoexpr"] = _plain(info)
    table = TableModel.parse(table, region=SPOTS, region_key="region", instance_key="instance_id")
    images = {IMAGE: image}
    attrs = {ATTR: {"format_version": 1, "mpp": mpp, "mpp_source": pyr.mpp_source, "slide": str(pyr.path),
                    "level0_shape": list(pyr.level0_shape), "units": "µm"}}
    if prediction is not None:
        images[PREDICTED], attrs[ATTR]["prediction"] = _prediction_image(prediction, mpp)
    sdata = sd.SpatialData(images=images, shapes={SPOTS: shapes}, tables={TABLE: table}, attrs=attrs)
    sdata.write(out, overwrite=overwrite)
    return out


def _prediction_image(path, mpp: float):
    """A ``histoexpr predict`` output as a genes x rows x cols image in the store's µm frame."""
    import dask.array as da
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale, Sequence, Translation


    try:
        g, a = open_prediction(path)
    except Exception as e:
        raise HistoExprError(f"{path}: not a histoexpr predict output ({e})") from e
    s = float(a["stride_px"])
    arr = da.from_zarr(g["0"])
    img = Image2DModel.parse(arr, dims=("c", "y", "x"), c_coords=list(a["genes"]),
                             transformations={"global": Sequence([
                                 Scale([s, s], axes=("y", "x")), Translation([0.5, 0.5], axes=("y", "x")),
                                 Scale([mpp, mpp], axes=("y", "x"))])})
    return img, {"source": str(path), "stride_px": s, "genes": list(a["genes"])}


def _scale_translation(t, axes=("y", "x")) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, offset)`` per axis of a transformation to 2-D world; rotations are refused."""
    m = np.asarray(t.to_affine_matrix(input_axes=axes, output_axes=axes), float)
    if abs(m[0, 1]) > 1e-9 or abs(m[1, 0]) > 1e-9:
        raise SpotDataError("this SpatialData element is rotated or sheared; only scaled and translated "
                            "elements can be opened")
    return np.array([m[0, 0], m[1, 1]]), m[:2, 2]


def read_store(path: str | os.PathLike):
    """``(SlidePyramid | None, AnnData)`` of a SpatialData store: the image, the shapes a table
    annotates (as spots in the image's level-0 pixels) and that table's counts."""
    sd = _sd()
    from spatialdata.transformations import get_transformation


    path = Path(path)
    try:
        sdata = sd.read_zarr(path)
    except Exception as e:
        raise SpotDataError(f"{path.name}: not a readable SpatialData store ({type(e).__name__}: {e})") from e
    ours = dict(sdata.attrs.get(ATTR, {})) if sdata.attrs else {}
    if not sdata.tables:
        raise SpotDataError(f"{path.name}: no table (measured expression) in this SpatialData store")
    tname = TABLE if TABLE in sdata.tables else next(iter(sdata.tables))
    table = sdata.tables[tname]
    spec = table.uns.get("spatialdata_attrs", {})
    regions = spec.get("region")
    regions = [regions] if isinstance(regions, str) else list(regions or [])
    region = next((r for r in regions if r in sdata.shapes), None)
    if region is None:
        raise SpotDataError(f"{path.name}: table {tname!r} annotates {regions}, none of them shapes")
    cs = "global"
    shapes = sdata.shapes[region]
    systems = list(get_transformation(shapes, get_all=True))
    if cs not in systems:
        cs = systems[0]
    # the image: ours by name, else the largest RGB image in the same coordinate system
    levels_of = {k: _levels(sdata.images[k]) for k in sdata.images
                 if cs in get_transformation(sdata.images[k], get_all=True)}
    rgb_images = {k: v for k, v in levels_of.items() if v[0].shape[0] in (3, 4)}
    name = IMAGE if IMAGE in rgb_images else max(rgb_images, key=lambda k: int(np.prod(rgb_images[k][0].shape[1:])),
                                                  default=None)
    img_scale, img_off, ds0 = np.ones(2), np.zeros(2), 1.0
    if name is not None:
        img_scale, img_off = _scale_translation(get_transformation(sdata.images[name], cs))
        if ours.get("level0_shape"):  # our export: the slide's first level may be reduced
            ds0 = float(ours["level0_shape"][0]) / rgb_images[name][0].shape[1]
    # spots: shape centres in the image's pixel-corner frame -> level-0 pixel centres
    s_scale, s_off = _scale_translation(get_transformation(shapes, cs))
    geoms = shapes.geometry
    cx = np.array([g.centroid.x for g in geoms])
    cy = np.array([g.centroid.y for g in geoms])
    wy, wx = cy * s_scale[0] + s_off[0], cx * s_scale[1] + s_off[1]
    px_y = (wy - img_off[0]) / img_scale[0] * ds0 - 0.5
    px_x = (wx - img_off[1]) / img_scale[1] * ds0 - 0.5
    if "radius" in shapes:
        diam = 2 * float(np.median(shapes["radius"])) * s_scale[1] / img_scale[1] * ds0
        square = False
    else:
        b = np.array([g.bounds for g in geoms])
        diam = float(np.median(b[:, 2] - b[:, 0])) * s_scale[1] / img_scale[1] * ds0
        square = True
    # rows of the table in shape order
    inst = spec.get("instance_key")
    rows = table[table.obs[spec.get("region_key")] == region] if spec.get("region_key") in table.obs else table
    order = {k: i for i, k in enumerate(shapes.index)}
    idx = np.array([order.get(v, -1) for v in rows.obs[inst]]) if inst in rows.obs else np.arange(rows.n_obs)
    if (idx < 0).any():
        raise SpotDataError(f"{path.name}: {(idx < 0).sum()} table rows name no shape of {region!r}")

    info = dict(rows.uns.get("histoexpr", {}))
    info.update(platform=info.get("platform", "spatialdata"), source=str(path), spot_diameter_px=diam)
    if square:
        info["spot_shape"] = "square"
    mpp = float(ours["mpp"]) if ours.get("mpp") else None
    if mpp:
        info.update(mpp=mpp, mpp_source=f"SpatialData store ({ours.get('mpp_source', 'given')})")
    else:
        info.setdefault("mpp_source", "unknown (store without units)")
    obs = rows.obs.drop(columns=[c for c in (spec.get("region_key"), inst) if c in rows.obs]).copy()
    names = obs.pop("spot_id").astype(str).to_numpy() if "spot_id" in obs else rows.obs_names.to_numpy()
    obs.index = names
    xy = np.stack([px_x[idx], px_y[idx]], 1)
    import scipy.sparse as sp

    adata = spot_anndata(sp.csr_matrix(rows.X, dtype=np.float32), obs, rows.var.copy(), xy, info)
    if not np.isfinite(diam):
        adata.uns["histoexpr"]["spot_diameter_px"] = 0.5 * nearest_neighbour_distance(xy)
    pyr = None
    if name is not None:
        pyr = _pyramid(rgb_images[name], ds0, str(path / "images" / name), mpp, info.get("mpp_source"))
    return pyr, adata


def _levels(el) -> list:
    """The (c, y, x) dask arrays of an image element, finest first."""
    from spatialdata import get_pyramid_levels

    if hasattr(el, "children") and el.children:
        return [lv.data for lv in get_pyramid_levels(el)]
    return [el.data]


def _pyramid(levels: list, ds0: float, path: str, mpp, mpp_source):
    """A lazily read :class:`SlidePyramid` over a store's RGB image levels (8-bit; other types scaled)."""
    import dask.array as da


    out, downs = [], []
    for lv in levels:
        a = da.moveaxis(lv[:3], 0, -1)
        if a.dtype != np.uint8:
            hi = float(a.max().compute()) or 1.0
            a = da.clip(a / hi * 255 if hi <= 1.0 or hi > 255 else a, 0, 255).astype(np.uint8)
        out.append(a)
        downs.append(ds0 * levels[0].shape[1] / lv.shape[1])
    h, w = levels[0].shape[1:]
    return SlidePyramid(path=path, levels=out, downsamples=downs, mpp=mpp, mpp_source=mpp_source or "unknown",
                        backend="spatialdata", tile_size=(512, 512),
                        level0_shape=(int(round(h * ds0)), int(round(w * ds0))))
