"""Drawn ground-truth regions: GeoJSON sidecars (autosaved, atomic) and rasterisation on a grid.

Regions are :class:`~napari_histoexpr.io.qupath.QuPathObject` annotations in level-0 pixel
coordinates ``(x, y)`` (QuPath's convention), with their holes and parts, each with
``properties.classification.name`` = the class: QuPath opens the sidecar as it is, and a QuPath export
opens here. Functions that take regions also take plain ``(polygon (K, 2), class)`` pairs. The sidecar
sits next to the slide (``<slide>.histoexpr.geojson``); when the slide's folder is read-only it goes to
``~/.cache/napari-histoexpr/annotations/``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..io.qupath import QuPathObject, as_object, parse_geojson, read_geojson, to_geojson, write_geojson

__all__ = ["sidecar_path", "to_geojson", "from_geojson", "save_regions", "load_regions", "read_regions",
           "as_regions", "rasterise", "inside_regions", "QuPathObject"]


def sidecar_path(slide_path: str | os.PathLike) -> Path:
    p = Path(slide_path)
    side = p.with_name(p.name + ".histoexpr.geojson")
    if os.access(p.parent, os.W_OK):
        return side
    base = os.environ.get("HISTOEXPR_CACHE") or os.path.join(Path.home(), ".cache", "napari-histoexpr")
    h = hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:12]
    return Path(base) / "annotations" / f"{p.name}.{h}.geojson"


def as_regions(objects: list[QuPathObject]) -> list[QuPathObject]:
    """The annotations among QuPath objects, as drawn regions (an unclassified one is "unclassified")."""
    regions = [o for o in objects if o.object_type == "annotation"]
    for o in regions:
        o.cls = o.cls or "unclassified"
    return regions


def from_geojson(obj: dict) -> list[QuPathObject]:
    """The annotations of a GeoJSON document as regions."""
    return as_regions(parse_geojson(obj, ("annotation",))[0])


def save_regions(path: str | os.PathLike, regions) -> Path:
    return write_geojson(path, regions)


def read_regions(path: str | os.PathLike) -> tuple[list[QuPathObject], dict]:
    """``(regions, skipped)``: the annotations of a GeoJSON file (a sidecar or a QuPath export) and the
    counts of what else it held; :class:`GeoJSONError` when unreadable."""
    objects, skipped = read_geojson(path, ("annotation",))
    return as_regions(objects), skipped


def load_regions(path: str | os.PathLike) -> list[QuPathObject]:
    """The annotations of a GeoJSON file as regions (see :func:`read_regions`)."""
    return read_regions(path)[0]


def _valid(geometry):
    """A self-intersecting polygon (hand-drawn) made valid, so that point tests are defined."""
    import shapely

    return geometry if geometry.is_valid else shapely.make_valid(geometry)


def inside_regions(regions, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Index of the last region holding each point ``(x, y)`` (holes excluded), ``-1`` for none."""
    import shapely

    x, y = np.asarray(x, float), np.asarray(y, float)
    out = np.full(x.shape, -1, np.int64)
    for k, r in enumerate(regions):
        out[shapely.contains_xy(_valid(as_object(r).geometry), x, y)] = k
    return out


def rasterise(regions, classes: list[str], stride: float, rows: int, cols: int) -> np.ndarray:
    """Class index per grid cell (``-1`` outside every region; later regions win; holes are outside),
    evaluated at cell centres ``((j + 0.5) * stride, (i + 0.5) * stride)`` in level-0 px."""
    import shapely

    out = np.full((rows, cols), -1, np.int32)
    cidx = {c: i for i, c in enumerate(classes)}
    for r in regions:
        o = as_object(r)
        if o.cls not in cidx:
            continue
        g = _valid(o.geometry)
        x0, y0, x1, y1 = g.bounds
        c0, c1 = max(0, int(x0 / stride)), min(cols - 1, int(x1 / stride))
        r0, r1 = max(0, int(y0 / stride)), min(rows - 1, int(y1 / stride))
        if c1 < c0 or r1 < r0:
            continue
        cc, rr = np.meshgrid(np.arange(c0, c1 + 1), np.arange(r0, r1 + 1))
        inside = shapely.contains_xy(g, (cc + 0.5) * stride, (rr + 0.5) * stride)
        out[rr[inside], cc[inside]] = cidx[o.cls]
    return out
