"""Drawn ground-truth regions: GeoJSON sidecars (autosaved, atomic) and rasterisation on a grid.

Polygons are stored in level-0 pixel coordinates ``(x, y)`` (QuPath's convention for GeoJSON
exports), each feature with ``properties.classification.name`` = the class, so QuPath can open the
file and vice versa. The sidecar sits next to the slide (``<slide>.histoexpr.geojson``); when the
slide's folder is read-only it goes to ``~/.cache/napari-histoexpr/annotations/``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..errors import HistoExprError
from ..files import atomic_write_bytes


def sidecar_path(slide_path: str | os.PathLike) -> Path:
    p = Path(slide_path)
    side = p.with_name(p.name + ".histoexpr.geojson")
    if os.access(p.parent, os.W_OK):
        return side
    base = os.environ.get("HISTOEXPR_CACHE") or os.path.join(Path.home(), ".cache", "napari-histoexpr")
    h = hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:12]
    return Path(base) / "annotations" / f"{p.name}.{h}.geojson"


def to_geojson(regions: list[tuple[np.ndarray, str]]) -> dict:
    feats = []
    for poly, cls in regions:
        ring = [[float(x), float(y)] for x, y in np.asarray(poly, float)]
        if ring and ring[0] != ring[-1]:
            ring.append(ring[0])
        feats.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                      "properties": {"objectType": "annotation", "classification": {"name": str(cls)}}})
    return {"type": "FeatureCollection", "features": feats}


def from_geojson(obj: dict) -> list[tuple[np.ndarray, str]]:
    out = []
    for f in obj.get("features", []):
        g = f.get("geometry") or {}
        polys = [g.get("coordinates", [])] if g.get("type") == "Polygon" else \
            g.get("coordinates", []) if g.get("type") == "MultiPolygon" else []
        props = f.get("properties") or {}
        cls = (props.get("classification") or {}).get("name") or props.get("class") or "unclassified"
        for rings in polys:
            if rings:
                out.append((np.asarray(rings[0], float)[:-1] if len(rings[0]) > 3 else np.asarray(rings[0], float),
                            str(cls)))
    return out


def save_regions(path: str | os.PathLike, regions) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(to_geojson(regions)).encode())
    return path


def load_regions(path: str | os.PathLike) -> list[tuple[np.ndarray, str]]:
    try:
        return from_geojson(json.loads(Path(path).read_text()))
    except (OSError, json.JSONDecodeError) as e:
        raise HistoExprError(f"cannot read annotations {Path(path).name}: {e}") from e


def rasterise(regions, classes: list[str], stride: float, rows: int, cols: int) -> np.ndarray:
    """Class index per grid cell (``-1`` outside every region; later regions win), evaluated at
    cell centres ``((j + 0.5) * stride, (i + 0.5) * stride)`` in level-0 px."""
    from matplotlib.path import Path as MPath

    out = np.full((rows, cols), -1, np.int32)
    cidx = {c: i for i, c in enumerate(classes)}
    for poly, cls in regions:
        if cls not in cidx:
            continue
        poly = np.asarray(poly, float)
        x0, y0 = poly.min(0)
        x1, y1 = poly.max(0)
        c0, c1 = max(0, int(x0 / stride)), min(cols - 1, int(x1 / stride))
        r0, r1 = max(0, int(y0 / stride)), min(rows - 1, int(y1 / stride))
        if c1 < c0 or r1 < r0:
            continue
        cc, rr = np.meshgrid(np.arange(c0, c1 + 1), np.arange(r0, r1 + 1))
        pts = np.stack([(cc.ravel() + 0.5) * stride, (rr.ravel() + 0.5) * stride], 1)
        inside = MPath(poly).contains_points(pts).reshape(cc.shape)
        out[rr[inside], cc[inside]] = cidx[cls]
    return out
