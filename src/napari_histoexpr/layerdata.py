"""napari LayerData tuples built from core objects (no Qt): the reader, the sample data and the panels
all build their layers here, so every layer lands in the same µm world.

World units are micrometres: the slide gets ``scale = (mpp, mpp)`` and everything else (spots,
predicted rasters, labels) uses the same world so they overlay whatever pyramid level is shown.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from .data.gene_values import find_gene, gene_values, percentile_limits
from .infer.grid import Grid, grid_layer_geometry
from .io.prediction_store import open_prediction, prediction_group_path
from .io.qupath import QuPathObject, geometry_from_parts, new_objects


def visible_box(center_yx: Iterable[float], zoom: float, canvas_hw: Iterable[int], world_mpp: float,
                margin: float = 0.0) -> tuple[float, float, float, float]:
    """Level-0 ``(y0, x0, y1, x1)`` seen by a 2D camera (µm world, ``zoom`` screen px per µm)."""
    cy, cx = list(center_yx)[-2:]
    h, w = list(canvas_hw)[-2:]
    hy, hx = h / 2 / zoom * (1 + margin), w / 2 / zoom * (1 + margin)
    return ((cy - hy) / world_mpp, (cx - hx) / world_mpp, (cy + hy) / world_mpp, (cx + hx) / world_mpp)


def slide_layer_data(pyr, name: str | None = None) -> tuple:
    """The slide as a napari LayerData tuple (multiscale RGB image in µm)."""
    s = pyr.world_mpp * pyr.downsamples[0]
    meta = {
        "histoexpr": {
            "kind": "slide",
            "path": pyr.path,
            "mpp": pyr.mpp,
            "mpp_source": pyr.mpp_source,
            "backend": pyr.backend,
            "downsamples": list(pyr.downsamples),
            "level0_shape": list(pyr.level0_shape),
        }
    }
    # napari puts pixel centres at translate + i*scale: a reduced first level's pixel i covers
    # level-0 pixels [i*ds, (i+1)*ds), centred at (i + 0.5) * ds - 0.5.
    t = (pyr.downsamples[0] - 1) / 2 * pyr.world_mpp
    kwargs = {
        "name": name or Path(pyr.path).stem,
        "rgb": True,
        "multiscale": len(pyr.levels) > 1,
        "scale": (s, s),
        "translate": (t, t),
        "units": "µm" if pyr.mpp else "pixel",
        "metadata": meta,
        "contrast_limits": (0, 255),
    }
    data = pyr.levels if len(pyr.levels) > 1 else pyr.levels[0]
    return (data, kwargs, "image")


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
        "symbol": "square" if info.get("spot_shape") == "square" else "disc",  # Visium HD bins: true squares
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


def prediction_layers(path, genes: list[str] | None = None, colormap: str = "inferno") -> list:
    """LayerData (one multiscale Image per gene, µm world, aligned with the slide) of a prediction."""
    import dask.array as da


    p = prediction_group_path(path)
    g, a = open_prediction(p)
    mpp = float(a["world_mpp"])
    grid = Grid(float(a["stride_px"]), int(a["rows"]), int(a["cols"]), int(a["tile_cells"]))
    geo = grid_layer_geometry(grid, mpp)
    levels = [da.from_zarr(g[str(i)]) for i in range(int(a.get("levels", 1))) if str(i) in g]
    out = []
    for gene in genes or a["genes"][:3]:
        if gene not in a["genes"]:
            import difflib

            from .errors import UnknownGeneError

            raise UnknownGeneError(gene, difflib.get_close_matches(gene, a["genes"], 3))
        k = a["genes"].index(gene)
        data = [lv[k] for lv in levels]
        sample = np.asarray(levels[-1][k])
        fin = sample[np.isfinite(sample)]
        lim = (float(np.percentile(fin, 1)), float(np.percentile(fin, 99))) if fin.size else (0.0, 1.0)
        if lim[1] <= lim[0]:
            lim = (lim[0], lim[0] + 1e-3)
        # each display level halves the grid: its first cell is centred on 2x2 level-0 cells
        out.append((data if len(data) > 1 else data[0], {
            "name": f"predicted: {gene}", "multiscale": len(data) > 1, "colormap": colormap,
            "opacity": 0.6, "blending": "translucent", "contrast_limits": lim, "units": "µm",
            "metadata": {"histoexpr": {"kind": "prediction", "gene": gene, "source": str(p)}}, **geo},
            "image"))
    return out


def residual_layer_data(sp, gene: str, shown: list[str], mpp: float, size_um: float) -> tuple:
    """Points at the spots of a :class:`~napari_histoexpr.infer.spot_prediction.SpotPrediction` coloured by
    predicted - measured ``gene``; features hold measured and predicted values of the ``shown`` genes."""
    j = sp.genes.index(gene)
    feats = pd.DataFrame({"spot": sp.spot_ids})
    for k in shown:
        if k in sp.genes:
            feats[f"{k} measured"] = sp.meas[:, sp.genes.index(k)]
            feats[f"{k} predicted"] = sp.pred[:, sp.genes.index(k)]
    feats["residual"] = sp.pred[:, j] - sp.meas[:, j]
    lim = float(np.percentile(np.abs(feats["residual"]), 98)) or 1.0
    return (np.asarray(sp.xy)[:, ::-1] * mpp, {
        "features": feats, "face_color": "residual", "face_colormap": "PiYG", "face_contrast_limits": (-lim, lim),
        "size": sp.spot_um or size_um, "symbol": "square" if sp.square else "disc", "border_width": 0,
        "name": f"residual: {gene}", "units": "µm",
        "metadata": {"histoexpr": {"kind": "residual", "gene": gene, "scale": sp.scale}}}, "points")


def grid_image_kwargs(grid, world_mpp: float, name: str, colormap: str, opacity: float, meta: dict) -> dict:
    """Arguments of an Image layer showing a prediction grid raster aligned with the slide."""

    return {"name": name, "colormap": colormap, "opacity": opacity, "blending": "translucent",
            "contrast_limits": (0.0, 1.0), "units": "µm", "metadata": {"histoexpr": meta},
            **grid_layer_geometry(grid, world_mpp)}


def planted_classes_layer_data(demo, classes: list[str], world_mpp: float, units: str = "µm") -> tuple | None:
    """The planted class map of a generated section (hidden Labels; label ``i`` is ``classes[i]``), or
    ``None`` if it has none."""
    paths = sorted(Path(demo.truth).glob("class_map_ds*.npy"))
    if not paths:
        return None
    ds = float(paths[0].stem.split("_ds")[1])
    s, t = ds * world_mpp, (ds - 1) / 2 * world_mpp
    return (np.load(paths[0]), {"name": "planted classes", "scale": (s, s), "translate": (t, t), "visible": False,
                                "opacity": 0.4, "units": units,
                                "metadata": {"histoexpr": {"kind": "truth", "classes": list(classes)}}}, "labels")


def class_points_layer_data(adata, labels, world_mpp: float, size_um: float) -> tuple:
    """The spots coloured by a categorical class per spot (the segmenter's training classes)."""
    xy = np.asarray(adata.obsm["spatial"], float)
    feats = pd.DataFrame({"spot": adata.obs_names.astype(str), "class": pd.Categorical(np.asarray(labels).astype(str))})
    return (xy[:, ::-1] * world_mpp, {"name": "transcriptome classes", "features": feats, "face_color": "class",
                                      "size": size_um, "border_width": 0, "units": "µm"}, "points")


#: the key of the ground-truth (drawn regions) layer, shared by the reader and the panels
TRUTH_KEY = "seg:truth"
#: a drawn-regions layer's features: napari polygons have no holes, so a region is one shape per ring
REGION_COLUMNS = ("class", "region", "part", "hole")


def region_rows(regions) -> tuple[list[np.ndarray], list[tuple]]:
    """The rings (level-0 (x, y)) of QuPath-object ``regions`` and a feature row ``(class, region id,
    part, hole)`` for each: rings of one region share its id, a MultiPolygon's parts are numbered."""
    import uuid

    rings, rows = [], []
    for o in regions:
        rid = o.id or uuid.uuid4().hex
        for p, part in enumerate(o.parts):
            for h, ring in enumerate(part):
                rings.append(ring)
                rows.append((o.cls, rid, p, h > 0))
    return rings, rows


def region_features(rows, classes: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"class": pd.Categorical([r[0] for r in rows], categories=classes),
                         "region": pd.Series([r[1] for r in rows], dtype=object),
                         "part": pd.Series([r[2] for r in rows], dtype=np.int64),
                         "hole": pd.Series([r[3] for r in rows], dtype=bool)})


def regions_layer_data(regions, world_mpp: float, sidecar, classes: list[str] | None = None) -> tuple:
    """The ground-truth Shapes LayerData of ``regions`` (one polygon per ring, edge coloured by class),
    autosaved to ``sidecar`` by the panels (see ``widgets._annotations``)."""
    classes = list(classes or [])
    classes += [c for c in dict.fromkeys(o.cls for o in regions) if c not in classes]
    classes = classes or ["region"]
    rings, rows = region_rows(regions)
    kwargs = {"name": "ground truth", "shape_type": "polygon", "edge_width": 4.0, "face_color": "transparent",
              "features": region_features(rows, classes), "units": "µm",
              "feature_defaults": {"class": classes[0], "region": "", "part": 0, "hole": False},
              "metadata": {"histoexpr": {"key": TRUTH_KEY, "kind": "annotations", "sidecar": str(sidecar),
                                         "world_mpp": float(world_mpp)}}}
    if rows:
        kwargs["edge_color"] = "class"
    return ([r[:, ::-1] * world_mpp for r in rings], kwargs, "shapes")


def detections_layer_data(objects, world_mpp: float, name: str, source=None) -> tuple:
    """QuPath detections (spots, bins, grid cells, cells) as Points at their centroids, sized to their
    area, with their measurements (and name, class) as features; coloured by the first measurement."""
    from .io.qupath import detection_table

    names, xy, table = detection_table(objects)
    feats = table.reset_index()
    if any(o.cls for o in objects):
        feats["class"] = [o.cls or "" for o in objects]
    area = np.array([o.geometry.area for o in objects], float)
    kwargs = {"name": name, "size": 2 * np.sqrt(area / np.pi) * world_mpp, "features": feats, "border_width": 0,
              "opacity": 0.85, "units": "µm",
              "symbol": "square" if objects and len(objects[0].exterior) == 4 else "disc",
              "metadata": {"histoexpr": {"kind": "qupath-detections", "source": None if source is None
                                         else str(source)}}}
    meas = [c for c in table.columns if np.issubdtype(table[c].dtype, np.number)]
    if meas:
        vals = table[meas[0]].to_numpy(float)
        kwargs.update(face_color=meas[0], face_colormap="viridis", face_contrast_limits=percentile_limits(vals))
    else:
        kwargs["face_color"] = "#ffcc00"
    return (xy[:, ::-1] * world_mpp, kwargs, "points")


def add_regions(layer, regions: list[QuPathObject]) -> int:
    """Append regions (e.g. a QuPath export's annotations) to a ground-truth layer, skipping those whose
    id it holds already; new classes join its categories. Returns the number of regions added."""
    old = layer.features.copy()
    regions = new_objects(regions, old["region"].astype(str) if "region" in old else ())
    cats = list(old["class"].cat.categories) if "class" in old else []
    cats += [c for c in dict.fromkeys(o.cls for o in regions) if c not in cats]
    rings, rows = region_rows(regions)
    if not rings:
        return 0
    keep = [tuple(r) for r in old[list(REGION_COLUMNS)].itertuples(index=False)]
    feats = pd.concat([region_features(keep, cats), region_features(rows, cats)], ignore_index=True)
    mpp = float(layer.metadata["histoexpr"]["world_mpp"])
    layer.add_polygons([r[:, ::-1] * mpp for r in rings])  # new rows get the defaults ...
    layer.features = feats  # ... replaced by the regions' own (both changes autosave)
    layer.edge_color = "class"
    return len(regions)


def regions_of(layer, world_mpp: float) -> list[QuPathObject]:
    """The regions of a ground-truth layer, rings of one region id gathered back into its parts and
    holes; a hole whose region lost its outer ring becomes a region of its own, so nothing drawn is
    dropped."""
    f = layer.features
    n = len(layer.data)
    col = {c: (f[c].tolist() if c in f else [None] * n) for c in REGION_COLUMNS}
    groups: dict = {}
    for k, d in enumerate(layer.data):
        ring = np.asarray(d)[:, -2:][:, ::-1] / world_mpp
        if len(ring) < 3:
            continue
        rid = col["region"][k] if isinstance(col["region"][k], str) and col["region"][k] else f"shape-{k}"
        hole = bool(col["hole"][k]) if col["hole"][k] is not None else False
        part = int(col["part"][k]) if col["part"][k] is not None and col["part"][k] == col["part"][k] else 0
        g = groups.setdefault(rid, {"cls": str(col["class"][k]), "parts": {}})
        g["parts"].setdefault(part, [None, []])
        if hole:
            g["parts"][part][1].append(ring)
        elif g["parts"][part][0] is None:
            g["parts"][part][0] = ring
        else:  # a second outer ring of the same part: its own part
            g["parts"][max(g["parts"]) + 1] = [ring, []]
    out = []
    for rid, g in groups.items():
        parts = []
        for ext, holes in g["parts"].values():
            parts += [[ext, *holes]] if ext is not None else [[h] for h in holes]
        out.append(QuPathObject(geometry_from_parts(parts), g["cls"], "annotation",
                                id=None if rid.startswith("shape-") else rid))
    return out


def layer_grid(layer, world_mpp: float) -> tuple[float, tuple[float, float]]:
    """``(stride, origin)`` in level-0 px of a grid raster layer (image or labels, µm world): its cell
    ``(i, j)`` is centred at level-0 ``origin + ((j + 0.5) * stride, (i + 0.5) * stride)``, the inverse of
    :func:`~napari_histoexpr.infer.grid.grid_layer_geometry`."""
    sy, sx = (float(v) for v in layer.scale[-2:])
    ty, tx = (float(v) for v in layer.translate[-2:])
    stride = sx / world_mpp
    # world centre of cell 0 = translate; its level-0 centre = world / mpp + 0.5
    return stride, (tx / world_mpp + 0.5 - 0.5 * stride, ty / world_mpp + 0.5 - 0.5 * stride)


def spot_values_layer_data(adata, values: np.ndarray, name: str, world_mpp: float, size_um: float,
                           meta: dict, colormap: str = "coolwarm", symmetric: bool = True) -> tuple:
    """The spots coloured by one value per spot (e.g. a measured gene-set score), the value in their
    features; ``symmetric``: contrast limits centred on 0 (a diverging scale)."""
    xy = np.asarray(adata.obsm["spatial"], float)
    values = np.asarray(values, float)
    feats = pd.DataFrame({"spot": adata.obs_names.astype(str), "value": values})
    lo, hi = percentile_limits(values, 1.0, 99.0)
    if symmetric:
        lim = max(abs(lo), abs(hi), 1e-3)
        lo, hi = -lim, lim
    return (xy[:, ::-1] * world_mpp, {"name": name, "features": feats, "face_color": "value",
                                      "face_colormap": colormap, "face_contrast_limits": (lo, hi), "size": size_um,
                                      "border_width": 0, "units": "µm", "metadata": {"histoexpr": meta}}, "points")
