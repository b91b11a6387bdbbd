"""QuPath objects as GeoJSON, as QuPath's *File › Export objects as GeoJSON* writes them and *File ›
Import objects* reads them.

Each object is a GeoJSON ``Feature`` whose geometry is in **level-0 pixel coordinates** ``(x, y)`` of
the slide (QuPath's image space: x to the right, y down, pixel ``(0, 0)`` covering ``[0, 1) x [0, 1)``)
and whose ``properties`` hold:

- ``objectType``: ``"annotation"`` (regions), ``"detection"`` (here: spots and grid cells), ``"tile"``
  or ``"cell"``;
- ``classification``: ``{"name": ..., "color": [r, g, b]}`` (QuPath 0.4+; the older
  ``{"name", "colorRGB"}`` packed integer is read too);
- ``measurements``: ``{"name": value}`` (QuPath 0.4+; the older list of ``{"name", "value"}`` is read
  too);
- ``name`` (optional), and ``isLocked`` for annotations.

Files may hold a ``FeatureCollection``, a single ``Feature`` or a bare list of features (all three
are QuPath export options). Polygons keep their holes and MultiPolygons their parts exactly; line and
point objects are not regions and are counted as skipped. See docs/qupath.md.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import GeoJSONError
from ..files import atomic_write_bytes

#: object types shown as detections (points with measurements) rather than taken as drawn regions
DETECTION_TYPES = ("detection", "cell", "tile")


@dataclass
class QuPathObject:
    """One QuPath object: a polygonal region (level-0 px) with its class, name and measurements."""

    geometry: object  # shapely Polygon or MultiPolygon, level-0 (x, y)
    cls: str | None = None
    object_type: str = "annotation"
    name: str | None = None
    color: tuple[int, int, int] | None = None
    measurements: dict[str, float] = field(default_factory=dict)
    id: str | None = None

    @property
    def parts(self) -> list[list[np.ndarray]]:
        """``[[exterior, hole, ...], ...]`` per polygon, each ring ``(K, 2)`` (x, y), not closed."""
        return polygon_parts(self.geometry)

    @property
    def exterior(self) -> np.ndarray:
        """The first part's outer ring (the region of a simple polygon)."""
        return self.parts[0][0]


def polygon_parts(geom) -> list[list[np.ndarray]]:
    polys = list(geom.geoms) if geom.geom_type == "MultiPolygon" else [geom]
    return [[_open_ring(p.exterior.coords)] + [_open_ring(r.coords) for r in p.interiors] for p in polys]


def _open_ring(coords) -> np.ndarray:
    a = np.asarray(coords, float)[:, :2]
    return a[:-1] if len(a) > 1 and np.array_equal(a[0], a[-1]) else a


def geometry_from_parts(parts: list[list[np.ndarray]]):
    """A Polygon (one part) or MultiPolygon from ``[[exterior, hole, ...], ...]``."""
    import shapely

    polys = [shapely.Polygon(np.asarray(rings[0], float), [np.asarray(h, float) for h in rings[1:]])
             for rings in parts if len(rings[0]) >= 3]
    if not polys:
        raise GeoJSONError("a region needs at least one ring of 3 or more points")
    return polys[0] if len(polys) == 1 else shapely.MultiPolygon(polys)


def as_object(region, object_type: str = "annotation") -> QuPathObject:
    """A :class:`QuPathObject` from itself or from a ``(polygon (K, 2) level-0 (x, y), class)`` pair."""
    if isinstance(region, QuPathObject):
        return region
    poly, cls = region
    return QuPathObject(geometry_from_parts([[np.asarray(poly, float)]]), str(cls), object_type)


# -- reading -------------------------------------------------------------------------------------------
def _color(c: dict) -> tuple[int, int, int] | None:
    if isinstance(c.get("color"), (list, tuple)) and len(c["color"]) >= 3:
        return tuple(int(v) for v in c["color"][:3])
    if isinstance(c.get("colorRGB"), int):  # QuPath <= 0.3: packed (A)RGB, possibly negative
        v = c["colorRGB"] & 0xFFFFFF
        return ((v >> 16) & 255, (v >> 8) & 255, v & 255)
    return None


def _measurements(m) -> dict[str, float]:
    if isinstance(m, dict):
        items = m.items()
    elif isinstance(m, list):  # QuPath <= 0.3
        items = [(d.get("name"), d.get("value")) for d in m if isinstance(d, dict)]
    else:
        return {}
    out = {}
    for k, v in items:
        try:
            out[str(k)] = float("nan") if v is None else float(v)
        except (TypeError, ValueError):
            continue
    return out


def _geometry(g: dict):
    import shapely

    t = (g or {}).get("type")
    if t == "Polygon":
        return geometry_from_parts([g["coordinates"]])
    if t == "MultiPolygon":
        return geometry_from_parts(list(g["coordinates"]))
    if t == "GeometryCollection":
        polys = [_geometry(m) for m in g.get("geometries", [])]
        polys = [p for p in polys if p is not None]
        if not polys:
            return None
        parts = [pp for p in polys for pp in (p.geoms if p.geom_type == "MultiPolygon" else [p])]
        return parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)
    return None  # points and lines are not regions


def parse_geojson(obj, object_types: tuple[str, ...] | None = None) -> tuple[list[QuPathObject], dict]:
    """QuPath objects of a parsed GeoJSON document (``FeatureCollection``, ``Feature`` or a list of
    features), keeping those of ``object_types`` (all when None; a feature without ``objectType`` is an
    annotation). Returns ``(objects, skipped)``: counts of what was left out, by reason."""
    if isinstance(obj, dict) and obj.get("type") == "FeatureCollection":
        feats = obj.get("features") or []
    elif isinstance(obj, dict) and obj.get("type") == "Feature":
        feats = [obj]
    elif isinstance(obj, list):
        feats = obj
    else:
        raise GeoJSONError("not GeoJSON objects: expected a FeatureCollection, a Feature or a list of features")
    out, skipped = [], {}
    for f in feats:
        if not isinstance(f, dict) or f.get("type") != "Feature":
            skipped["not a feature"] = skipped.get("not a feature", 0) + 1
            continue
        props = f.get("properties") or {}
        kind = str(props.get("objectType") or "annotation")
        if object_types is not None and kind not in object_types:
            skipped[kind] = skipped.get(kind, 0) + 1
            continue
        try:
            geom = _geometry(f.get("geometry"))
        except (TypeError, ValueError, KeyError, IndexError) as e:
            raise GeoJSONError(f"feature {len(out) + sum(skipped.values()) + 1} has a malformed geometry: {e}") from e
        if geom is None:
            why = f"{(f.get('geometry') or {}).get('type', 'no')} geometry"
            skipped[why] = skipped.get(why, 0) + 1
            continue
        cl = props.get("classification") or {}
        cls = cl.get("name") if isinstance(cl, dict) else None
        if cls is None and isinstance(cl, dict) and cl.get("names"):
            cls = ": ".join(map(str, cl["names"]))
        out.append(QuPathObject(geom, None if cls is None else str(cls), kind, props.get("name"),
                                _color(cl) if isinstance(cl, dict) else None,
                                _measurements(props.get("measurements")), f.get("id")))
    return out, skipped


def describe_skipped(skipped: dict) -> str:
    """``skipped`` of :func:`parse_geojson` in words ("1 detection, 1 LineString geometry")."""
    return ", ".join(f"{n} {k}" for k, n in skipped.items())


def new_objects(objects, ids) -> list:
    """The objects whose id is not among ``ids`` (an object without an id is new): importing the same
    export twice adds nothing."""
    ids = set(ids)
    return [o for o in objects if not o.id or o.id not in ids]


def read_geojson(path, object_types: tuple[str, ...] | None = None) -> tuple[list[QuPathObject], dict]:
    """:func:`parse_geojson` of a file; a named :class:`GeoJSONError` when it is not readable JSON."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GeoJSONError(f"cannot read GeoJSON {Path(path).name}: {e}") from e
    try:
        return parse_geojson(obj, object_types)
    except GeoJSONError as e:
        raise GeoJSONError(f"{Path(path).name}: {e}") from e


def looks_like_geojson(path) -> bool:
    low = os.fspath(path).lower()
    return low.endswith(".geojson") or low.endswith(".geo.json")


# -- writing -------------------------------------------------------------------------------------------
def _ring(a: np.ndarray) -> list:
    pts = [[float(x), float(y)] for x, y in np.asarray(a, float)]
    return pts + pts[:1] if pts and pts[0] != pts[-1] else pts


def to_feature(o: QuPathObject) -> dict:
    parts = o.parts
    rings = [[_ring(r) for r in part] for part in parts]
    geom = ({"type": "Polygon", "coordinates": rings[0]} if len(rings) == 1
            else {"type": "MultiPolygon", "coordinates": rings})
    props: dict = {"objectType": o.object_type}
    if o.object_type == "annotation":
        props["isLocked"] = False
    if o.name:
        props["name"] = str(o.name)
    if o.cls is not None:
        props["classification"] = {"name": o.cls, "color": list(o.color or class_color(o.cls))}
    if o.measurements:
        props["measurements"] = {k: float(v) for k, v in o.measurements.items() if np.isfinite(v)}
    return {"type": "Feature", "id": o.id or str(uuid.uuid4()), "geometry": geom, "properties": props}


def to_geojson(objects) -> dict:
    """A ``FeatureCollection`` of QuPath objects (or ``(polygon, class)`` pairs: annotations)."""
    return {"type": "FeatureCollection", "features": [to_feature(as_object(o)) for o in objects]}


def write_geojson(path, objects) -> Path:
    """Write QuPath objects to ``path`` atomically (a reader never sees a part of the file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(to_geojson(objects), allow_nan=False).encode())
    return path


_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)]


def class_color(name: str) -> tuple[int, int, int]:
    """A stable colour per class name (the same in every export)."""
    import zlib

    return _PALETTE[zlib.crc32(str(name).encode()) % len(_PALETTE)]


# -- objects from the plugin's results -----------------------------------------------------------------
def label_map_objects(labels: np.ndarray, classes: list[str], stride: float, origin=(0.0, 0.0),
                      skip: tuple[int, ...] = (), mpp: float | None = None,
                      simplify: float = 0.0) -> list[QuPathObject]:
    """One annotation per connected region of each class of a label map (class indices; ``-1`` or
    ``skip`` classes are left out), with its holes.

    Cell ``(i, j)`` is centred at level-0 ``(origin_x + (j + 0.5) * stride, origin_y + (i + 0.5) *
    stride)``. Boundaries are marching-squares contours half-way between the centres of cells in and
    out of the class, so rasterising the regions at the cell centres gives the label map back; corners
    of the cell staircase are cut diagonally. ``simplify`` (in cells) thins vertices further
    (Douglas-Peucker, topology kept). With ``mpp``, each region gets an ``Area µm^2`` measurement."""
    import shapely
    from scipy.ndimage import find_objects
    from skimage.measure import find_contours, label

    labels = np.asarray(labels)
    out = []
    for c, name in enumerate(classes):
        if c in skip:
            continue
        mask = labels == c
        if not mask.any():
            continue
        comp = label(mask, connectivity=1)
        for k, box in enumerate(find_objects(comp), 1):  # each region within its bounding box
            if box is None:
                continue
            m = np.pad(comp[box] == k, 1).astype(np.float32)
            rings = []
            r0, c0 = box[0].start - 1, box[1].start - 1  # the padding's offset
            for r in find_contours(m, 0.5):  # the mask 4-connected, as the component
                if len(r) >= 4:
                    rings.append(np.stack([origin[0] + (r[:, 1] + c0 + 0.5) * stride,
                                           origin[1] + (r[:, 0] + r0 + 0.5) * stride], 1))
            if not rings:
                continue
            # one 4-connected component has one outer boundary (the largest); the others are its holes
            area = [abs(shapely.Polygon(r).area) for r in rings]
            outer = int(np.argmax(area))
            geom = shapely.Polygon(rings[outer], [r for i, r in enumerate(rings) if i != outer])
            if simplify > 0:
                geom = geom.simplify(simplify * stride, preserve_topology=True)
            meas = {"Area µm^2": float(geom.area * mpp * mpp)} if mpp else {}
            meas["Cells"] = float((comp[box] == k).sum())
            out.append(QuPathObject(geom, name, "annotation", measurements=meas))
    return out


def disc(cx: float, cy: float, r: float, n: int = 24) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def point_detections(xy: np.ndarray, size_px: float, measurements: dict[str, np.ndarray],
                     names=None, square: bool = False, cls: str | None = None) -> list[QuPathObject]:
    """One detection per point ``(x, y)`` level-0: a disc of diameter ``size_px`` (spots) or a square of
    side ``size_px`` (bins, grid cells), with one measurement per column of ``measurements``."""
    xy = np.asarray(xy, float)
    cols = {k: np.asarray(v, float) for k, v in measurements.items()}
    h = size_px / 2
    out = []
    for i, (x, y) in enumerate(xy):
        ring = (np.array([[x - h, y - h], [x + h, y - h], [x + h, y + h], [x - h, y + h]]) if square
                else disc(x, y, h))
        out.append(QuPathObject(geometry_from_parts([[ring]]), cls, "detection",
                                None if names is None else str(names[i]),
                                measurements={k: float(v[i]) for k, v in cols.items()}))
    return out


def detection_table(objects: list[QuPathObject]):
    """``(names, centroids (N, 2) level-0 (x, y), DataFrame of measurements)`` of detections."""
    import pandas as pd

    names = [o.name or o.id or str(i) for i, o in enumerate(objects)]
    xy = np.array([[o.geometry.centroid.x, o.geometry.centroid.y] for o in objects], float).reshape(-1, 2)
    table = pd.DataFrame([o.measurements for o in objects], index=pd.Index(names, name="name"))
    return names, xy, table


def slide_next_to(path) -> Path | None:
    """The slide a GeoJSON file belongs to, in its folder: ``<slide>.histoexpr.geojson`` (a sidecar) or
    ``<slide>.geojson`` names it; else the slide whose name (without suffix) is the longest prefix of
    the file's; else the folder's only slide."""
    from .slides import is_slide_path

    p = Path(path)
    name = p.name
    for suf in (".geojson", ".geo.json", ".json"):
        if name.lower().endswith(suf):
            name = name[: -len(suf)]
            break
    name = name[: -len(".histoexpr")] if name.endswith(".histoexpr") else name
    if (p.parent / name).is_file() and is_slide_path(name):
        return p.parent / name
    slides = sorted(f for f in p.parent.iterdir() if f.is_file() and is_slide_path(f.name))
    stem = lambda f: f.name[: -len("".join(f.suffixes))] if f.suffixes else f.name  # noqa: E731
    named = [f for f in slides if name == stem(f) or name.startswith(stem(f))]
    if named:
        return max(named, key=lambda f: len(stem(f)))
    return slides[0] if len(slides) == 1 else None
